/* Credential responses through entra_cred_fetch, one attempt per input: IMDS, App Service
 * (every expires_on form), Arc (challenge, key file, second answer), and the Entra token
 * endpoint (workload identity and client secret) with its error bodies. The input is up
 * to five parts separated by "\n--\n": control bytes (kind, status, status of the second
 * answer), body, Retry-After, WWW-Authenticate, second body.
 * A token comes back only non-empty and unexpired; a failure always sets its error, and
 * no error text carries control characters or anything JWT-shaped. */
#include <string.h>
#include <unistd.h>

#include "entra_cred.h"
#include "entra_json.h"
#include "fuzz.h"

#define ARC_DIR "/var/opt/azcmagent/tokens"

static const int statuses[] = {200, 400, 401, 404, 410, 429, 500, 503};

typedef struct {
    const uint8_t *part[5];
    size_t len[5];
    size_t n;
    unsigned requests;
} served;

static const char *part(apr_pool_t *p, const served *s, size_t i, size_t *len)
{
    *len = i < s->n ? s->len[i] : 0;
    return i < s->n ? apr_pstrmemdup(p, (const char *)s->part[i], s->len[i]) : NULL;
}

static int ctrl(const served *s, size_t i)
{
    return s->n > 0 && s->len[0] > i ? s->part[0][i] : 0;
}

static apr_status_t answer(void *baton, apr_pool_t *p, const char *url,
                           const char *const *headers, entra_http_resp *resp, const char **why)
{
    served *s = baton;
    size_t n;
    const char *v;
    int second = s->requests++ > 0;

    FUZZ_ASSERT(s->requests <= 2);
    resp->status = statuses[ctrl(s, second ? 2 : 1) % 8];
    resp->body = (char *)part(p, s, second ? 4 : 1, &resp->len);
    if (!resp->body) {
        resp->body = apr_pstrdup(p, "");
        resp->len = 0;
    }
    if ((v = part(p, s, 2, &n)) && n)
        resp->retry_after = v;
    if ((v = part(p, s, 3, &n)) && n)
        resp->www_authenticate = v;
    return APR_SUCCESS;
}

/* The host's reader: only ever asked for a .key file directly in the agent's directory. */
static const char *arc_read(void *baton, apr_pool_t *p, const char *path, const char **why)
{
    size_t n = strlen(path), dl = strlen(ARC_DIR);
    FUZZ_ASSERT(n > dl + 5 && strncmp(path, ARC_DIR "/", dl + 1) == 0);
    FUZZ_ASSERT(!strchr(path + dl + 1, '/') && !strstr(path, ".."));
    FUZZ_ASSERT(strcmp(path + n - 4, ".key") == 0);
    return "c2VjcmV0";
}

static void clean(const char *s)
{
    if (!s)
        return;
    FUZZ_ASSERT(!strstr(s, "eyJ"));
    for (; *s; s++)
        FUZZ_ASSERT((unsigned char)*s >= 0x20);
}

static char secret_file[64], token_file[64];

static void write_temp(char *path, const char *text)
{
    int fd;
    strcpy(path, "/tmp/entra-fuzz-XXXXXX");
    FUZZ_ASSERT((fd = mkstemp(path)) >= 0);
    FUZZ_ASSERT(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
}

static void cleanup_files(void)
{
    unlink(secret_file);
    unlink(token_file);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const entra_cred_kind kinds[] = {ENTRA_CRED_IMDS, ENTRA_CRED_APPSERVICE,
                                            ENTRA_CRED_ARC, ENTRA_CRED_WORKLOAD,
                                            ENTRA_CRED_SECRET};
    apr_pool_t *p;
    entra_cred c;
    entra_token tok;
    entra_fetch_result fr;
    served s;
    apr_int64_t t0;
    apr_status_t rv;

    if (!secret_file[0]) {
        write_temp(secret_file, "not-a-real-secret\n");
        write_temp(token_file, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n");
        atexit(cleanup_files);
    }
    apr_pool_create(&p, fuzz_init());
    memset(&s, 0, sizeof(s));
    s.n = fuzz_split(data, size, s.part, s.len, 5);
    memset(&c, 0, sizeof(c));
    c.name = "fuzz";
    c.kind = kinds[ctrl(&s, 0) % 5];
    c.selector = (ctrl(&s, 0) / 5) % 4;
    c.selector_value = "00000000-0000-0000-0000-000000000001";
    c.endpoint = c.kind == ENTRA_CRED_IMDS ? "http://169.254.169.254/metadata/identity/oauth2/token"
                                           : "http://127.0.0.1:40342/token";
    c.identity_header = "header";
    c.authority = "https://login.example.test/";
    c.tenant = "11111111-2222-3333-4444-555555555555";
    c.client_id = "c0ffee00-1234-4abc-8def-0123456789ab";
    c.secret_file = secret_file;
    c.token_file = token_file;
    c.http.timeout_ms = 1000;
    c.arc_reader = arc_read;
    c.arc_key_dir = ARC_DIR;
    fuzz_http_set(answer, &s);

    t0 = (apr_int64_t)apr_time_sec(apr_time_now());
    rv = entra_cred_fetch(p, &c, "https://vault.azure.net/.default", 2000, &tok, &fr);
    if (rv == APR_SUCCESS) {
        FUZZ_ASSERT(tok.access_token && *tok.access_token);
        FUZZ_ASSERT(tok.expires_on > tok.obtained && tok.obtained >= t0);
        FUZZ_ASSERT(fr.status == 200 && !fr.error);
    }
    else {
        /* May be empty: the endpoint's own "error" member, when it sends "". */
        FUZZ_ASSERT(fr.error != NULL);
        FUZZ_ASSERT(!tok.access_token);
    }
    FUZZ_ASSERT(fr.retry_after >= -1);
    clean(fr.error);
    clean(fr.description);

    /* The expiry rule on its own, for whatever JSON object the body is. */
    {
        json_t *body;
        const char *why;
        size_t n;
        const char *b = part(p, &s, 1, &n);
        if (b && entra_json_parse_object(p, b, n, 64 * 1024, &body, &why) == APR_SUCCESS)
            FUZZ_ASSERT(entra_token_expiry(body, t0) >= 0);
    }
    fuzz_http_set(NULL, NULL);
    apr_pool_destroy(p);
    return 0;
}
