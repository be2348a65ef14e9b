#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <apr_strings.h>
#include <apr_lib.h>
#include <apr_file_io.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/err.h>

#include "entra_arc.h"
#include "entra_b64url.h"
#include "entra_cred.h"
#include "entra_flight.h"
#include "entra_json.h"

#define RESPONSE_MAX (64 * 1024)
#define FILE_MAX (64 * 1024)
#define ASSERTION_LIFETIME 600

const char *entra_cred_kind_name(entra_cred_kind kind)
{
    switch (kind) {
    case ENTRA_CRED_IMDS:
        return "imds";
    case ENTRA_CRED_APPSERVICE:
        return "appservice";
    case ENTRA_CRED_ARC:
        return "arc";
    case ENTRA_CRED_WORKLOAD:
        return "workload";
    case ENTRA_CRED_SECRET:
        return "secret";
    case ENTRA_CRED_CERTIFICATE:
        return "certificate";
    }
    return "?";
}

apr_status_t entra_cred_detect_managed(apr_pool_t *p, entra_cred_kind *kind,
                                       const char **endpoint, const char **header,
                                       const char **why)
{
    const char *ie = getenv("IDENTITY_ENDPOINT"), *ih = getenv("IDENTITY_HEADER");
    const char *imds = getenv("IMDS_ENDPOINT"), *pod = getenv("AZURE_POD_IDENTITY_AUTHORITY_HOST");
    apr_finfo_t fi;

    *header = NULL;
    if (ie && ih) {
        if (getenv("IDENTITY_SERVER_THUMBPRINT")) {
            *why = "Service Fabric managed identity is not supported";
            return APR_ENOTIMPL;
        }
        *kind = ENTRA_CRED_APPSERVICE;
        *endpoint = apr_pstrdup(p, ie);
        *header = apr_pstrdup(p, ih);
        return APR_SUCCESS;
    }
    if (getenv("MSI_ENDPOINT")) {
        *why = getenv("MSI_SECRET") ? "Azure ML managed identity is not supported"
                                    : "Cloud Shell managed identity is not supported";
        return APR_ENOTIMPL;
    }
    if (ie && (imds || apr_stat(&fi, "/opt/azcmagent/bin/himds", APR_FINFO_TYPE, p) ==
                           APR_SUCCESS)) {
        *kind = ENTRA_CRED_ARC;
        *endpoint = apr_pstrdup(p, ie);
        return APR_SUCCESS;
    }
    *kind = ENTRA_CRED_IMDS;
    if (pod && *pod)
        *endpoint = apr_pstrcat(p, pod, pod[strlen(pod) - 1] == '/' ? "" : "/",
                                "metadata/identity/oauth2/token", NULL);
    else
        *endpoint = "http://169.254.169.254/metadata/identity/oauth2/token";
    return APR_SUCCESS;
}

const char *entra_resource_from_scope(apr_pool_t *p, const char *scope)
{
    apr_size_t n = strlen(scope), k = strlen("/.default");
    if (n > k && strcmp(scope + n - k, "/.default") == 0)
        return apr_pstrndup(p, scope, n - k);
    return scope;
}

/* RFC 3986 percent-encoding of everything but unreserved characters. */
static const char *urlenc(apr_pool_t *p, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = apr_palloc(p, strlen(s) * 3 + 1), *o = out;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (apr_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~')
            *o++ = (char)c;
        else {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o = '\0';
    return out;
}

/* Reads a small text file whole, without a trailing newline. */
static const char *read_small_file(apr_pool_t *p, const char *path, apr_size_t max,
                                   const char **why)
{
    apr_file_t *f;
    apr_finfo_t fi;
    char *buf;
    apr_size_t n;

    if (apr_file_open(&f, path, APR_FOPEN_READ, 0, p) != APR_SUCCESS) {
        *why = apr_pstrcat(p, "cannot read ", path, NULL);
        return NULL;
    }
    if (apr_file_info_get(&fi, APR_FINFO_SIZE, f) != APR_SUCCESS || fi.size < 0 ||
        (apr_size_t)fi.size > max) {
        apr_file_close(f);
        *why = apr_pstrcat(p, path, " is too large", NULL);
        return NULL;
    }
    n = (apr_size_t)fi.size;
    buf = apr_palloc(p, n + 1);
    if (n && apr_file_read_full(f, buf, n, &n) != APR_SUCCESS) {
        apr_file_close(f);
        *why = apr_pstrcat(p, "cannot read ", path, NULL);
        return NULL;
    }
    apr_file_close(f);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    buf[n] = '\0';
    if (!n) {
        *why = apr_pstrcat(p, path, " is empty", NULL);
        return NULL;
    }
    return buf;
}

/* App Service 2017: "09/14/2017 00:00:00 +00:00" (M/D/Y, UTC offset). */
static apr_int64_t parse_date(const char *s)
{
    int mo, d, y, h, mi, sec, oh = 0, om = 0;
    char sign = '+';
    struct tm tm;
    apr_int64_t t;

    if (sscanf(s, "%d/%d/%d %d:%d:%d %c%d:%d", &mo, &d, &y, &h, &mi, &sec, &sign, &oh, &om) < 6)
        return 0;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || y < 1970 || y > 9999 || h < 0 || h > 23 ||
        mi < 0 || mi > 59 || sec < 0 || sec > 60 || oh < 0 || oh > 14 || om < 0 || om > 59)
        return 0;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    t = (apr_int64_t)timegm(&tm);
    t -= (sign == '-' ? -1 : 1) * (oh * 3600 + om * 60);
    return t;
}

/* A number or numeric string member in seconds; -1 when absent or unusable. */
static apr_int64_t number_member(const json_t *o, const char *name)
{
    apr_int64_t v;
    return entra_json_seconds(json_object_get(o, name), 1, &v) ? v : -1;
}

apr_int64_t entra_token_expiry(const json_t *body, apr_int64_t now)
{
    apr_int64_t on = number_member(body, "expires_on"), in;
    json_t *v = json_object_get(body, "expires_on");
    if (on > 0)
        return on;
    if (json_is_string(v) && (on = parse_date(json_string_value(v))) > 0)
        return on;
    in = number_member(body, "expires_in");
    return in > 0 ? now + in : 0;
}

/* The `exp` of a JWT access token, read without verifying anything; 0 if none. */
static apr_int64_t jwt_exp(apr_pool_t *p, const char *tok)
{
    const char *d1 = strchr(tok, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    unsigned char *payload;
    apr_size_t len;
    json_t *claims;
    const char *why;
    apr_int64_t exp;

    if (!d2 || entra_b64url_decode(p, d1 + 1, (apr_size_t)(d2 - d1 - 1), &payload, &len) ||
        entra_json_parse_object(p, (const char *)payload, len, RESPONSE_MAX, &claims, &why))
        return 0;
    return entra_json_seconds(json_object_get(claims, "exp"), 0, &exp) ? exp : 0;
}

/* Keeps error text short and free of anything token-shaped. */
static const char *clean_text(apr_pool_t *p, const char *s)
{
    char *c, *out;
    if (!s)
        return NULL;
    out = apr_pstrndup(p, s, 240);
    for (c = out; *c; c++) {
        if ((unsigned char)*c < 0x20)
            *c = ' ';
        if (c[0] == 'e' && c[1] == 'y' && c[2] == 'J') {
            /* Redact a JWT-looking run. */
            char *e = c;
            while (apr_isalnum(*e) || *e == '-' || *e == '_' || *e == '.')
                *e++ = '*';
            c = e - 1;
        }
    }
    return out;
}

static int managed(const entra_cred *c)
{
    return c->kind == ENTRA_CRED_IMDS || c->kind == ENTRA_CRED_APPSERVICE ||
           c->kind == ENTRA_CRED_ARC;
}

/* Interprets a token endpoint answer. */
static apr_status_t take_response(apr_pool_t *p, const entra_cred *c, entra_http_resp *resp,
                                  apr_int64_t now, entra_token *tok, entra_fetch_result *fr)
{
    json_t *body = NULL;
    const char *why, *at, *q;
    apr_int64_t exp, jexp;

    fr->status = resp->status;
    /* Clamped (to ENTRA_BACKOFF_MAX) and overflow-safe: it becomes a sleep and a backoff. */
    fr->retry_after = entra_retry_after_parse(resp->retry_after);
    if (entra_json_parse_object(p, resp->body, resp->len, RESPONSE_MAX, &body, &why) !=
        APR_SUCCESS)
        body = NULL;
    if (resp->status != 200) {
        fr->error = body && entra_json_str(body, "error")
                        ? clean_text(p, entra_json_str(body, "error"))
                        : apr_psprintf(p, "HTTP %d", resp->status);
        fr->description = body ? clean_text(p, entra_json_str(body, "error_description")) : NULL;
        if (managed(c))
            fr->retryable = resp->status == 404 || resp->status == 410 || resp->status == 429 ||
                            resp->status >= 500;
        else
            fr->retryable = resp->status >= 500 && fr->retry_after < 0;
        return APR_EGENERAL;
    }
    at = body ? entra_json_str(body, "access_token") : NULL;
    if (!at || !*at) {
        fr->error = body ? "response without access_token" : "response is not JSON";
        fr->retryable = managed(c);
        return APR_EGENERAL;
    }
    for (q = at; *q; q++)
        if (((unsigned char)*q < 0x20 && *q != '\t') || *q == 0x7f)
            break;
    if (*q) {
        /* It would become a request header: never attach, never cache such a token. */
        fr->error = "access_token has control characters";
        fr->retryable = managed(c);
        return APR_EGENERAL;
    }
    exp = entra_token_expiry(body, now);
    jexp = jwt_exp(p, at);
    /* Trust the earlier of what the endpoint says and what the token says. */
    if (jexp > 0 && (exp <= 0 || jexp < exp))
        exp = jexp;
    if (exp <= now) {
        fr->error = "response has no usable expiry";
        fr->retryable = 0;
        return APR_EGENERAL;
    }
    tok->access_token = apr_pstrdup(p, at);
    tok->expires_on = exp;
    tok->obtained = now;
    return APR_SUCCESS;
}

/* Arc names its key file in `WWW-Authenticate: Basic realm=<path>`; only a .key file
 * directly in the agent's token directory may be read (entra_arc_key_path_check). */
static const char *arc_key_path(apr_pool_t *p, const entra_cred *c, const char *challenge,
                                const char **why)
{
    const char *realm = challenge ? strstr(challenge, "realm=") : NULL;
    char *path;

    if (!c->arc_key_dir) {
        *why = "no Arc key directory configured";
        return NULL;
    }
    if (!challenge || strncasecmp(challenge, "Basic ", 6) != 0 || !realm) {
        *why = "Arc answered 401 without a Basic realm challenge";
        return NULL;
    }
    path = apr_pstrdup(p, realm + 6);
    if (*path == '"') {
        path++;
        path[strcspn(path, "\"")] = '\0';
    }
    if ((*why = entra_arc_key_path_check(c->arc_key_dir, path)))
        return NULL;
    return path;
}

static apr_status_t fetch_managed(apr_pool_t *p, const entra_cred *c, const char *resource,
                                  const entra_http_opts *o, apr_int64_t now, entra_token *tok,
                                  entra_fetch_result *fr)
{
    const char *url, *sel = NULL, *hdrs[3] = {NULL, NULL, NULL}, *why, *api;
    entra_http_resp *resp;
    apr_status_t rv;

    switch (c->kind) {
    case ENTRA_CRED_APPSERVICE:
        api = "2019-08-01";
        sel = c->selector == ENTRA_SEL_CLIENT_ID   ? "client_id"
              : c->selector == ENTRA_SEL_OBJECT_ID ? "principal_id"
              : c->selector == ENTRA_SEL_RESOURCE_ID ? "mi_res_id"
                                                     : NULL;
        hdrs[0] = apr_pstrcat(p, "X-IDENTITY-HEADER: ", c->identity_header ? c->identity_header : "",
                              NULL);
        break;
    case ENTRA_CRED_ARC:
        api = "2020-06-01";
        hdrs[0] = "Metadata: true";
        break;
    default:
        api = "2018-02-01";
        sel = c->selector == ENTRA_SEL_CLIENT_ID   ? "client_id"
              : c->selector == ENTRA_SEL_OBJECT_ID ? "object_id"
              : c->selector == ENTRA_SEL_RESOURCE_ID ? "msi_res_id"
                                                     : NULL;
        hdrs[0] = "Metadata: true";
        break;
    }
    url = apr_pstrcat(p, c->endpoint, strchr(c->endpoint, '?') ? "&" : "?", "api-version=", api,
                      "&resource=", urlenc(p, resource), NULL);
    if (sel)
        url = apr_pstrcat(p, url, "&", sel, "=", urlenc(p, c->selector_value), NULL);

    rv = entra_http_request(p, url, hdrs, NULL, 0, o, &resp, &why);
    if (rv == APR_SUCCESS && c->kind == ENTRA_CRED_ARC && resp->status == 401) {
        const char *path = arc_key_path(p, c, resp->www_authenticate, &why), *secret;
        if (!path || !c->arc_reader ||
            !(secret = c->arc_reader(c->arc_baton, p, path, &why))) {
            fr->status = 401;
            fr->error = c->arc_reader ? why : "no way to read the Arc key file";
            return APR_EGENERAL;
        }
        hdrs[1] = apr_pstrcat(p, "Authorization: Basic ", secret, NULL);
        rv = entra_http_request(p, url, hdrs, NULL, 0, o, &resp, &why);
    }
    if (rv != APR_SUCCESS) {
        fr->error = why;
        /* A refused URL stays refused; a cancelled one means the process is exiting. */
        fr->retryable = rv != APR_EINVAL && rv != APR_EINTR;
        return rv;
    }
    return take_response(p, c, resp, now, tok, fr);
}

static char *uuid4(apr_pool_t *p)
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1)
        return NULL;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    return apr_psprintf(p, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
                        b[12], b[13], b[14], b[15]);
}

/* A client assertion: PS256 with x5t#S256, aud = the token URL, short-lived. */
static const char *client_assertion(apr_pool_t *p, const entra_cred *c, const char *aud,
                                    apr_int64_t now, const char **why)
{
    json_t *h = json_pack("{s:s, s:s, s:s}", "alg", "PS256", "typ", "JWT", "x5t#S256", c->x5t_s256);
    const char *jti = uuid4(p);
    json_t *cl = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "aud", aud, "iss", c->client_id,
                           "sub", c->client_id, "jti", jti ? jti : "", "nbf", (json_int_t)now,
                           "iat", (json_int_t)now, "exp", (json_int_t)(now + ASSERTION_LIFETIME));
    char *hs, *cs, *input, *out = NULL;
    unsigned char *sig = NULL;
    size_t siglen = 0;
    EVP_MD_CTX *md = NULL;
    EVP_PKEY_CTX *pctx = NULL;

    entra_json_pool_own(p, h);
    entra_json_pool_own(p, cl);
    hs = entra_json_dump(p, h);
    cs = entra_json_dump(p, cl);
    if (!jti || !hs || !cs) {
        *why = "cannot build the client assertion";
        return NULL;
    }
    input = apr_pstrcat(p, entra_b64url_encode(p, (unsigned char *)hs, strlen(hs)), ".",
                        entra_b64url_encode(p, (unsigned char *)cs, strlen(cs)), NULL);
    md = EVP_MD_CTX_new();
    if (md && EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, c->key) == 1 &&
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0 &&
        EVP_DigestSign(md, NULL, &siglen, (unsigned char *)input, strlen(input)) == 1) {
        sig = apr_palloc(p, siglen);
        if (EVP_DigestSign(md, sig, &siglen, (unsigned char *)input, strlen(input)) == 1)
            out = apr_pstrcat(p, input, ".", entra_b64url_encode(p, sig, siglen), NULL);
    }
    EVP_MD_CTX_free(md);
    if (!out) {
        ERR_clear_error();
        *why = "cannot sign the client assertion";
    }
    return out;
}

static apr_status_t fetch_entra(apr_pool_t *p, const entra_cred *c, const char *resource,
                                const entra_http_opts *o, apr_int64_t now, entra_token *tok,
                                entra_fetch_result *fr)
{
    const char *url = apr_pstrcat(p, c->authority, c->tenant, "/oauth2/v2.0/token", NULL);
    const char *hdrs[] = {"Content-Type: application/x-www-form-urlencoded",
                          "Accept: application/json", NULL};
    const char *why = NULL, *cred = NULL, *body, *scope;
    entra_http_resp *resp;
    apr_status_t rv;

    scope = strchr(resource, ' ') || (strlen(resource) > 9 &&
                                      !strcmp(resource + strlen(resource) - 9, "/.default"))
                ? resource
                : apr_pstrcat(p, resource, "/.default", NULL);
    body = apr_pstrcat(p, "grant_type=client_credentials&client_id=", urlenc(p, c->client_id),
                       "&scope=", urlenc(p, scope), NULL);
    if (c->kind == ENTRA_CRED_SECRET) {
        if ((cred = read_small_file(p, c->secret_file, FILE_MAX, &why)))
            body = apr_pstrcat(p, body, "&client_secret=", urlenc(p, cred), NULL);
    }
    else {
        cred = c->kind == ENTRA_CRED_WORKLOAD ? read_small_file(p, c->token_file, FILE_MAX, &why)
                                              : client_assertion(p, c, url, now, &why);
        if (cred)
            body = apr_pstrcat(p, body,
                               "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-"
                               "assertion-type%3Ajwt-bearer&client_assertion=",
                               urlenc(p, cred), NULL);
    }
    if (!cred) {
        fr->error = why;
        return APR_EGENERAL;
    }
    rv = entra_http_request(p, url, hdrs, body, strlen(body), o, &resp, &why);
    if (rv != APR_SUCCESS) {
        fr->error = why;
        fr->retryable = rv != APR_EINVAL && rv != APR_EINTR;
        return rv;
    }
    return take_response(p, c, resp, now, tok, fr);
}

apr_status_t entra_cred_fetch(apr_pool_t *p, const entra_cred *c, const char *resource,
                              long timeout_ms, entra_token *tok, entra_fetch_result *fr)
{
    entra_http_opts o = c->http;
    apr_time_t t0 = apr_time_now();
    apr_int64_t now = (apr_int64_t)apr_time_sec(t0);
    apr_status_t rv;

    memset(tok, 0, sizeof(*tok));
    memset(fr, 0, sizeof(*fr));
    fr->retry_after = -1;
    if (timeout_ms < o.timeout_ms)
        o.timeout_ms = timeout_ms > 100 ? timeout_ms : 100;
    if (o.connect_timeout_ms > o.timeout_ms)
        o.connect_timeout_ms = o.timeout_ms;
    o.max_body = RESPONSE_MAX;
    if (managed(c)) {
        o.direct = 1; /* IMDS, Arc and App Service are local: never via a proxy */
        rv = fetch_managed(p, c, entra_resource_from_scope(p, resource), &o, now, tok, fr);
    }
    else
        rv = fetch_entra(p, c, resource, &o, now, tok, fr);
    fr->duration = apr_time_now() - t0;
    return rv;
}

static apr_status_t free_pkey(void *k)
{
    EVP_PKEY_free(k);
    return APR_SUCCESS;
}

apr_status_t entra_cred_load_certificate(apr_pool_t *p, entra_cred *c, const char *cert_file,
                                         const char *key_file, const char **why)
{
    FILE *f;
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    unsigned char md[32], *der = NULL;
    int dl;

    if (!(f = fopen(cert_file, "r")) || !(x = PEM_read_X509(f, NULL, NULL, NULL))) {
        if (f)
            fclose(f);
        *why = apr_pstrcat(p, "cannot read a PEM certificate from ", cert_file, NULL);
        ERR_clear_error();
        return APR_EINVAL;
    }
    fclose(f);
    dl = i2d_X509(x, &der);
    X509_free(x);
    if (dl <= 0 || !EVP_Digest(der, (size_t)dl, md, NULL, EVP_sha256(), NULL)) {
        OPENSSL_free(der);
        *why = "cannot hash the certificate";
        return APR_EINVAL;
    }
    OPENSSL_free(der);
    if (!(f = fopen(key_file, "r")) || !(k = PEM_read_PrivateKey(f, NULL, NULL, NULL))) {
        if (f)
            fclose(f);
        *why = apr_pstrcat(p, "cannot read a PEM private key from ", key_file, NULL);
        ERR_clear_error();
        return APR_EINVAL;
    }
    fclose(f);
    if (EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA || EVP_PKEY_get_bits(k) < 2048) {
        EVP_PKEY_free(k);
        *why = apr_pstrcat(p, key_file, ": the key must be RSA of at least 2048 bits", NULL);
        return APR_EINVAL;
    }
    c->key = k;
    apr_pool_cleanup_register(p, k, free_pkey, apr_pool_cleanup_null);
    c->x5t_s256 = entra_b64url_encode(p, md, sizeof(md));
    return APR_SUCCESS;
}
