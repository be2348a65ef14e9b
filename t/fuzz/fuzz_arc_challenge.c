/* The Arc challenge: the whole input is the WWW-Authenticate value of Arc's 401. The key
 * file reader must only ever be asked for a .key file directly in the agent's token
 * directory (no "..", no subdirectory, no other prefix); when it is, the retried request
 * carries the key and its answer gives the token. */
#include <string.h>

#include "entra_cred.h"
#include "fuzz.h"

#define ARC_DIR "/var/opt/azcmagent/tokens"
#define TOKEN "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjIwMDAwMDAwMDB9.c2ln"

typedef struct {
    const char *challenge;
    unsigned requests;
    int read;
} state;

static apr_status_t answer(void *baton, apr_pool_t *p, const char *url,
                           const char *const *headers, entra_http_resp *resp, const char **why)
{
    state *s = baton;
    if (s->requests++ == 0) {
        FUZZ_ASSERT(headers && headers[0] && !headers[1]);
        resp->status = 401;
        resp->www_authenticate = s->challenge;
        return APR_SUCCESS;
    }
    FUZZ_ASSERT(s->requests == 2 && s->read);
    FUZZ_ASSERT(headers[1] && !strcmp(headers[1], "Authorization: Basic c2VjcmV0"));
    resp->body = apr_pstrdup(p, "{\"access_token\":\"" TOKEN "\",\"expires_on\":\"2000000000\"}");
    resp->len = strlen(resp->body);
    return APR_SUCCESS;
}

static const char *arc_read(void *baton, apr_pool_t *p, const char *path, const char **why)
{
    state *s = baton;
    size_t n = strlen(path), dl = strlen(ARC_DIR);
    FUZZ_ASSERT(n > dl + 5 && strncmp(path, ARC_DIR "/", dl + 1) == 0);
    FUZZ_ASSERT(!strchr(path + dl + 1, '/') && !strstr(path, ".."));
    FUZZ_ASSERT(strcmp(path + n - 4, ".key") == 0);
    /* The path is the challenge's realm: it was in the header. */
    FUZZ_ASSERT(strstr(s->challenge, path) != NULL);
    s->read = 1;
    return "c2VjcmV0";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    apr_pool_t *p;
    entra_cred c;
    entra_token tok;
    entra_fetch_result fr;
    state s;
    apr_status_t rv;

    apr_pool_create(&p, fuzz_init());
    memset(&s, 0, sizeof(s));
    s.challenge = apr_pstrmemdup(p, (const char *)data, size); /* a header ends at NUL */
    memset(&c, 0, sizeof(c));
    c.name = "arc";
    c.kind = ENTRA_CRED_ARC;
    c.endpoint = "http://127.0.0.1:40342/metadata/identity/oauth2/token";
    c.http.timeout_ms = 1000;
    c.arc_reader = arc_read;
    c.arc_baton = &s;
    c.arc_key_dir = ARC_DIR;
    fuzz_http_set(answer, &s);
    rv = entra_cred_fetch(p, &c, "https://management.azure.com/", 2000, &tok, &fr);
    if (s.read) {
        FUZZ_ASSERT(rv == APR_SUCCESS && tok.expires_on == 2000000000);
        FUZZ_ASSERT(!strcmp(tok.access_token, TOKEN));
    }
    else {
        FUZZ_ASSERT(rv != APR_SUCCESS && fr.status == 401 && fr.error && s.requests == 1);
    }
    fuzz_http_set(NULL, NULL);
    apr_pool_destroy(p);
    return 0;
}
