/* Inbound: find the bearer token, verify it, answer RFC 6750 errors, pass claims on. */
#include <string.h>
#include <strings.h>

#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_request.h>
#include <mod_auth.h>
#include <util_filter.h>
#include <apr_strings.h>
#include <apr_lib.h>

#include "entra_json.h"
#include "entra_policy.h"
#include "entra_metrics.h"
#include "mod_entra.h"

APLOG_USE_MODULE(entra);

#define STATUS_BODY_FILTER "ENTRA_STATUS_BODY"

entra_req_state *entra_req_state_get(request_rec *r)
{
    while (r->main)
        r = r->main;
    return ap_get_module_config(r->request_config, &entra_module);
}

entra_req_state *entra_req_state_ensure(request_rec *r)
{
    entra_req_state *st;
    while (r->main)
        r = r->main;
    st = ap_get_module_config(r->request_config, &entra_module);
    if (!st) {
        st = apr_pcalloc(r->pool, sizeof(*st));
        ap_set_module_config(r->request_config, &entra_module, st);
    }
    return st;
}

void entra_note_error(request_rec *r, const char *why)
{
    apr_table_setn(r->subprocess_env, "ENTRA_ERROR", why);
}

void entra_note_denied(request_rec *r, entra_req_state *st, const char *why)
{
    (void)r;
    if (!st->denied)
        st->denied = why;
}

static int is_entra(request_rec *r)
{
    const char *t = ap_auth_type(r);
    return t && strcasecmp(t, "Entra") == 0;
}

static const char *realm(request_rec *r)
{
    const char *n = ap_auth_name(r);
    return n ? n : "Entra";
}

/* RFC 6750 quoted-string values: our reasons contain no quotes, but be safe. */
static const char *quoted(apr_pool_t *p, const char *s)
{
    char *q = apr_pstrdup(p, s), *c;
    for (c = q; *c; c++)
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20)
            *c = '\'';
    return q;
}

void entra_challenge(request_rec *r, const char *error, const char *desc)
{
    const char *v = apr_psprintf(r->pool, "Bearer realm=\"%s\"", quoted(r->pool, realm(r)));
    if (error)
        v = apr_psprintf(r->pool, "%s, error=\"%s\"", v, error);
    if (desc)
        v = apr_psprintf(r->pool, "%s, error_description=\"%s\"", v, quoted(r->pool, desc));
    apr_table_setn(r->err_headers_out, "WWW-Authenticate", v);
}

/* CGI, WSGI and Django turn '-' and '_' of header names into '_': X_Entra_Oid reaches an
 * application as X-Entra-Oid would, so names compare with both alike, and in any case. */
static int fold(char c)
{
    return c == '_' ? '-' : apr_tolower(c);
}

static int folded_match(const char *name, const char *want, int prefix)
{
    for (; *want; name++, want++)
        if (!*name || fold(*name) != fold(*want))
            return 0;
    return prefix || !*name;
}

int entra_header_eq(const char *a, const char *b)
{
    return folded_match(a, b, 0);
}

int entra_owned_header(const entra_dir_conf *d, const char *name)
{
    int i;
    if (folded_match(name, "X-Entra-", 1))
        return 1;
    for (i = 0; d && d->lua_headers && i < d->lua_headers->nelts; i++)
        if (folded_match(name, APR_ARRAY_IDX(d->lua_headers, i, const char *), 0))
            return 1;
    return 0;
}

int entra_has_ctl(const char *v, apr_size_t len)
{
    apr_size_t i;
    for (i = 0; i < len; i++)
        if (((unsigned char)v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f)
            return 1;
    return 0;
}

/* Removes every request header only the module may set (all spellings, all repeats). */
static void strip_owned_headers(apr_table_t *t, const entra_dir_conf *d)
{
    const apr_array_header_t *arr = apr_table_elts(t);
    int i = 0;
    while (i < arr->nelts) {
        const char *key = APR_ARRAY_IDX(arr, i, apr_table_entry_t).key;
        /* unset removes this spelling everywhere and compacts the array: look at i again */
        if (key && entra_owned_header(d, key))
            apr_table_unset(t, key);
        else
            i++;
    }
}

static int post_read_request(request_rec *r)
{
    strip_owned_headers(r->headers_in, NULL);
    return DECLINED;
}

typedef enum { TOK_NONE, TOK_ONE, TOK_MANY, TOK_MALFORMED } tok_found;

/* Authorization: Bearer <token>; scheme case-insensitive, one or more spaces. httpd joins
 * repeated headers with ", ", which a token cannot contain: that reads as TOK_MANY. */
static tok_found from_header(request_rec *r, const char **tok, apr_size_t *len)
{
    const char *h = apr_table_get(r->headers_in, "Authorization"), *t, *end;
    if (!h)
        return TOK_NONE;
    if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\0')) {
        /* Another scheme is no bearer token, unless a second header adds one. */
        return ap_strcasestr(h, ", Bearer ") ? TOK_MANY : TOK_NONE;
    }
    for (t = h + 6; *t == ' '; t++)
        ;
    for (end = t; *end && *end != ' ' && *end != ','; end++)
        ;
    if (*end) {
        const char *rest = end;
        while (*rest == ' ')
            rest++;
        if (*rest == ',')
            return TOK_MANY;
        if (*rest)
            return TOK_MALFORMED;
    }
    *tok = t;
    *len = (apr_size_t)(end - t);
    return TOK_ONE;
}

static tok_found from_query(request_rec *r, const char **tok, apr_size_t *len)
{
    const char *a = r->args, *found = NULL;
    int n = 0;
    while (a && *a) {
        const char *amp = strchr(a, '&'), *end = amp ? amp : a + strlen(a);
        if ((apr_size_t)(end - a) >= 13 && strncmp(a, "access_token=", 13) == 0) {
            n++;
            found = a + 13;
            *len = (apr_size_t)(end - found);
        }
        a = amp ? amp + 1 : NULL;
    }
    if (n == 0)
        return TOK_NONE;
    *tok = found;
    return n > 1 ? TOK_MANY : TOK_ONE;
}

static tok_found from_cookie(request_rec *r, const char *name, const char **tok,
                             apr_size_t *len)
{
    const char *c = apr_table_get(r->headers_in, "Cookie");
    apr_size_t nl = strlen(name);
    int n = 0;
    while (c && *c) {
        const char *semi;
        while (*c == ' ' || *c == ';' || *c == ',')
            c++;
        semi = c + strcspn(c, ";,");
        if ((apr_size_t)(semi - c) > nl && strncmp(c, name, nl) == 0 && c[nl] == '=') {
            n++;
            *tok = c + nl + 1;
            *len = (apr_size_t)(semi - *tok);
            while (*len && (*tok)[*len - 1] == ' ')
                (*len)--;
        }
        c = semi;
    }
    return n == 0 ? TOK_NONE : n > 1 ? TOK_MANY : TOK_ONE;
}

/* Finds the token in the places this route accepts; more than one is invalid_request. */
static tok_found find_token(request_rec *r, const entra_dir_conf *d, const char **tok,
                            apr_size_t *len)
{
    unsigned in = entra_conf_token_in(d);
    tok_found res[3] = {TOK_NONE, TOK_NONE, TOK_NONE};
    const char *t[3] = {NULL, NULL, NULL};
    apr_size_t l[3] = {0, 0, 0};
    int i, ones = 0;

    if (in & ENTRA_TOKEN_IN_HEADER)
        res[0] = from_header(r, &t[0], &l[0]);
    if (in & ENTRA_TOKEN_IN_QUERY)
        res[1] = from_query(r, &t[1], &l[1]);
    if ((in & ENTRA_TOKEN_IN_COOKIE) && d->cookie_name)
        res[2] = from_cookie(r, d->cookie_name, &t[2], &l[2]);
    for (i = 0; i < 3; i++) {
        if (res[i] == TOK_MANY || res[i] == TOK_MALFORMED)
            return res[i];
        if (res[i] == TOK_ONE) {
            ones++;
            *tok = t[i];
            *len = l[i];
        }
    }
    return ones == 0 ? TOK_NONE : ones > 1 ? TOK_MANY : TOK_ONE;
}

const char *entra_claim_text(apr_pool_t *p, json_t *claims, const char *name)
{
    json_t *v = json_object_get(claims, name);
    const char *val = NULL;

    if (json_is_string(v))
        val = json_string_value(v);
    else if (json_is_array(v)) {
        size_t k;
        json_t *e;
        val = "";
        json_array_foreach(v, k, e)
        {
            if (json_is_string(e))
                val = apr_pstrcat(p, val, *val ? ", " : "", json_string_value(e), NULL);
        }
    }
    else if (json_is_integer(v))
        val = apr_psprintf(p, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_boolean(v))
        val = json_is_true(v) ? "true" : "false";
    /* A value that could split or forge a header line reaches nobody. */
    return val && entra_has_ctl(val, strlen(val)) ? NULL : val;
}

/* "oid" -> X-Entra-Oid / ENTRA_OID. */
static void pass_claims(request_rec *r, const entra_dir_conf *d, json_t *claims)
{
    int i;
    for (i = 0; d->pass_claims && i < d->pass_claims->nelts; i++) {
        const char *name = APR_ARRAY_IDX(d->pass_claims, i, const char *);
        const char *val = entra_claim_text(r->pool, claims, name);
        char *hdr, *env, *c;

        if (!val) {
            /* Refused, not repaired: a backend must never mistake a mangled value for the
             * claim (entra_claim_text refuses a string or array holding a control byte). */
            if (json_is_string(json_object_get(claims, name)) ||
                json_is_array(json_object_get(claims, name)))
                ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                              "ENTRA0550: claim %s has control characters: not passed to the "
                              "backend",
                              name);
            continue;
        }
        hdr = apr_pstrcat(r->pool, "X-Entra-", name, NULL);
        hdr[8] = (char)apr_toupper(hdr[8]);
        env = apr_pstrcat(r->pool, "ENTRA_", name, NULL);
        for (c = env; *c; c++)
            *c = *c == '-' || *c == '.' ? '_' : (char)apr_toupper(*c);
        apr_table_set(r->headers_in, hdr, val);
        apr_table_set(r->subprocess_env, env, val);
    }
}

static const char *claim_or_dash(json_t *claims, const char *name)
{
    const char *v = claims ? entra_json_str(claims, name) : NULL;
    return v ? v : "-";
}

/* Finds and verifies the token; on success the request carries the caller (r->user, the
 * claims, ENTRA_* env, X-Entra-* headers). A request without a token gets 401 unless
 * `anonymous_ok`, where it returns DECLINED and stays anonymous. */
static int authenticate(request_rec *r, entra_dir_conf *d, int anonymous_ok)
{
    entra_verifier v;
    entra_verify_result res;
    entra_req_state *st;
    const char *tok = NULL, *user_claim;
    apr_size_t len = 0;
    json_t *user;
    apr_uint64_t t0;

    /* Per-directory: the section's EntraLuaHeaders too, before any rule can run. */
    strip_owned_headers(r->headers_in, d);
    if ((!d->tenant && !d->metadata_url) || !d->audiences) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "ENTRA0201: AuthType Entra without EntraTenant/EntraAudience here");
        entra_metrics_authn(ENTRA_AUTHN_ERROR, ENTRA_R_INTERNAL, 0, -1);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    switch (find_token(r, d, &tok, &len)) {
    case TOK_NONE:
        if (anonymous_ok)
            return DECLINED;
        entra_note_error(r, "no access token");
        entra_metrics_authn(ENTRA_AUTHN_MISSING, ENTRA_R_MISSING_TOKEN, 0, -1);
        entra_challenge(r, NULL, NULL);
        return HTTP_UNAUTHORIZED;
    case TOK_MANY:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "ENTRA0202: request rejected: more than one access token");
        entra_note_error(r, "more than one access token");
        entra_metrics_authn(ENTRA_AUTHN_INVALID, ENTRA_R_MULTIPLE_TOKENS, 0, -1);
        entra_challenge(r, "invalid_request", "more than one access token in the request");
        return HTTP_BAD_REQUEST;
    case TOK_MALFORMED:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "ENTRA0203: request rejected: malformed Authorization header");
        entra_note_error(r, "malformed Authorization header");
        entra_metrics_authn(ENTRA_AUTHN_INVALID, ENTRA_R_MALFORMED_HEADER, 0, -1);
        entra_challenge(r, "invalid_request", "malformed Authorization header");
        return HTTP_BAD_REQUEST;
    case TOK_ONE:
        break;
    }

    memset(&v, 0, sizeof(v));
    v.policy.tenant = d->metadata_url ? NULL : d->tenant;
    v.policy.multi_tenant = v.policy.tenant && (!strcmp(v.policy.tenant, "common") ||
                                                !strcmp(v.policy.tenant, "organizations"));
    v.policy.allowed_tenants = d->allowed_tenants;
    v.policy.audiences = d->audiences;
    v.policy.clock_skew = entra_conf_clock_skew(d);
    v.policy.max_lifetime = entra_conf_max_lifetime(d);
    v.policy.alg_mask = entra_conf_alg_mask(d);
    v.policy.cloud = (entra_cloud)d->cloud;
    v.source = entra_source_for(r->pool, d);
    v.vtab = entra_cache_vtab();
    v.l1 = entra_process_l1();
    if (!v.source) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "ENTRA0204: no key source available");
        entra_metrics_authn(ENTRA_AUTHN_ERROR, ENTRA_R_INTERNAL, 0, -1);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    t0 = entra_metrics_now();
    entra_verify_token(r->pool, &v, tok, len, (apr_int64_t)apr_time_sec(r->request_time), &res);

    if (res.outcome == ENTRA_VERIFY_UNAVAILABLE) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "ENTRA0205: signing keys unavailable, answering 503 (token id %s): %s",
                      res.token_id, res.why);
        entra_metrics_authn(ENTRA_AUTHN_ERROR, ENTRA_R_NO_KEYS, t0, res.cached);
        apr_table_setn(r->err_headers_out, "Retry-After", "10");
        entra_note_error(r, "signing keys unavailable");
        return HTTP_SERVICE_UNAVAILABLE;
    }
    if (res.outcome == ENTRA_VERIFY_OK) {
        user_claim = d->remote_user_claim ? d->remote_user_claim : "oid";
        user = json_object_get(res.claims, user_claim);
        if (!json_is_string(user) || !*json_string_value(user)) {
            res.outcome = ENTRA_VERIFY_INVALID;
            res.why = apr_psprintf(r->pool, "token has no %s claim", user_claim);
        }
        else if (entra_has_ctl(json_string_value(user), json_string_length(user))) {
            res.outcome = ENTRA_VERIFY_INVALID;
            res.why = apr_psprintf(r->pool, "token has an invalid %s claim", user_claim);
        }
    }
    if (res.outcome != ENTRA_VERIFY_OK) {
        const char *app = claim_or_dash(res.claims, "azp");
        if (!strcmp(app, "-"))
            app = claim_or_dash(res.claims, "appid");
        /* Until the signature holds, ids are only what the caller says it is. */
        const char *said = res.signed_ok ? "" : "claimed ";
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "ENTRA0206: token rejected: %s (token id %s, %sapp %s, %soid %s%s)",
                      res.why, res.token_id, said, app, said, claim_or_dash(res.claims, "oid"),
                      res.cached ? ", cached" : "");
        entra_note_error(r, res.why);
        entra_metrics_authn(ENTRA_AUTHN_INVALID, entra_metrics_reason(res.why), t0, res.cached);
        entra_challenge(r, "invalid_token", res.why);
        return HTTP_UNAUTHORIZED;
    }

    entra_metrics_authn(ENTRA_AUTHN_VALID, ENTRA_R_OTHER, t0, res.cached);
    st = entra_req_state_ensure(r);
    st->claims = res.claims;
    st->token_id = res.token_id;
    r->user = apr_pstrdup(r->pool, json_string_value(user));
    r->ap_auth_type = "Entra";
    apr_table_setn(r->subprocess_env, "ENTRA_TOKEN_ID", res.token_id);
    pass_claims(r, d, res.claims);
    ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, "ENTRA0207: token %s accepted for %s%s",
                  res.token_id, r->user, res.cached ? " (cached)" : "");
    return OK;
}

/* Authentication runs once per request: from httpd's check_authn phase, or earlier when an
 * expression asks for a claim (mod_entra_expr.c). Its answer is kept on the request itself
 * (never its main request: a subrequest may be another route) and given again; an
 * anonymous pass under EntraOptional is not an answer to keep. */
static int authenticate_once(request_rec *r, int anonymous_ok)
{
    entra_req_state *own = ap_get_module_config(r->request_config, &entra_module), *st;
    int rc;

    if (own && own->authn_done)
        return own->authn_status;
    if (!is_entra(r))
        return DECLINED;
    /* EntraOptional verified the token already (see access_ex), for this very request: a
     * subrequest to another section is verified against that section's rules. */
    st = entra_req_state_get(r);
    if (st && st->claims && r->user && st->optional_done == r)
        return OK;
    rc = authenticate(r, ap_get_module_config(r->per_dir_config, &entra_module), anonymous_ok);
    if (rc == DECLINED)
        return rc;
    if (!(own = ap_get_module_config(r->request_config, &entra_module))) {
        own = apr_pcalloc(r->pool, sizeof(*own));
        ap_set_module_config(r->request_config, &entra_module, own);
    }
    own->authn_done = 1;
    own->authn_status = rc;
    return rc;
}

int entra_authenticate(request_rec *r)
{
    const entra_dir_conf *d = ap_get_module_config(r->per_dir_config, &entra_module);
    return authenticate_once(r, d->optional == 1);
}

static int check_authn(request_rec *r)
{
    return authenticate_once(r, 0);
}

/* A CORS preflight: the browser sends it without credentials, by design (Fetch standard). */
static int is_preflight(request_rec *r)
{
    return r->method_number == M_OPTIONS && apr_table_get(r->headers_in, "Origin") &&
           apr_table_get(r->headers_in, "Access-Control-Request-Method") &&
           !apr_table_get(r->headers_in, "Authorization");
}

/* Runs before mod_authz_core's userless check, which under `Require all granted` (or any
 * rule granting without a user) skips authentication altogether: EntraOptional must look
 * at a token that is present all the same, and EntraAllowPreflight marks preflights before
 * any rule can ask for a token. */
static int access_ex(request_rec *r)
{
    entra_dir_conf *d;
    if (!is_entra(r))
        return DECLINED;
    d = ap_get_module_config(r->per_dir_config, &entra_module);
    if (d->allow_preflight == 1 && is_preflight(r)) {
        /* The entra-* rules grant it; every other rule of the section (Require ip, ...)
         * still applies. */
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                      "ENTRA0701: CORS preflight: entra rules grant it without a token "
                      "(EntraAllowPreflight)");
        entra_req_state_ensure(r)->preflight = 1;
        return DECLINED;
    }
    if (d->optional == 1) {
        int rc = authenticate(r, d, 1);
        if (rc == OK)
            entra_req_state_ensure(r)->optional_done = r;
        /* OK: the caller is known and the Require rules decide with it; DECLINED: no token,
         * the rules decide whether an anonymous caller may pass. */
        return rc == OK ? DECLINED : rc;
    }
    return DECLINED;
}

/* A Require denied a caller whose token was valid: a claims challenge (401, returns 1)
 * when an entra-acrs rule asked for one, else RFC 6750's 403 insufficient_scope (0). */
static int denied_answer(request_rec *r, entra_req_state *st)
{
    if (st->claims_challenge) {
        /* An entra-acrs rule denied a client that declared cp1: ask it to come back with
         * the authentication context (a Conditional Access step-up), in Microsoft's
         * claims-challenge form. Clients without cp1 get the 403: they would loop. */
        const entra_dir_conf *d = ap_get_module_config(r->per_dir_config, &entra_module);
        const char *v = apr_psprintf(r->pool, "Bearer realm=\"%s\"", quoted(r->pool, realm(r)));
        if (d->tenant && !d->metadata_url)
            v = apr_psprintf(r->pool, "%s, authorization_uri=\"%s%s/oauth2/v2.0/authorize\"", v,
                             entra_conf_authority(d), d->tenant);
        apr_table_setn(r->err_headers_out, "WWW-Authenticate",
                       apr_psprintf(r->pool, "%s, error=\"insufficient_claims\", claims=\"%s\"",
                                    v, st->claims_challenge));
        entra_note_error(r, "authentication context required");
        return 1;
    }
    entra_note_error(r, st->denied ? st->denied : "denied by the Require rules");
    entra_challenge(r, "insufficient_scope", "the token does not grant access to this resource");
    return 0;
}

/* Called by mod_authz_core for AuthType Entra when it answers 401. */
static int note_auth_failure(request_rec *r, const char *auth_type)
{
    entra_req_state *st;
    if (strcasecmp(auth_type, "Entra") != 0)
        return DECLINED;
    st = entra_req_state_get(r);
    if (st && st->claims) {
        /* The token was fine; a Require denied it. */
        if (!denied_answer(r, st))
            st->forbidden = 1;
    }
    else if (!apr_table_get(r->err_headers_out, "WWW-Authenticate")) {
        entra_note_error(r, "no access token");
        entra_challenge(r, NULL, NULL);
    }
    return OK;
}

/* mod_authz_core answers a denied, authenticated caller with 401 (unless
 * AuthzSendForbiddenOnFailure); turn that into the 403 RFC 6750 asks for. Under
 * EntraOptional the caller is known before mod_authz_core's userless check, which denies
 * with a bare 403 without asking note_auth_failure: give that one the same answers. And
 * when an expression authenticated the request before authorization (Require expr, <If>)
 * and found no valid token, mod_authz_core answers 403: the caller gets the 401 or 400
 * that authentication decided, with its challenge. */
static void insert_error_filter(request_rec *r)
{
    entra_req_state *st = entra_req_state_get(r);
    entra_req_state *own = ap_get_module_config(r->request_config, &entra_module);

    if (st && st->forbidden && r->status == HTTP_UNAUTHORIZED) {
        r->status = HTTP_FORBIDDEN;
    }
    else if (st && st->claims && r->status == HTTP_FORBIDDEN && !st->forbidden && is_entra(r) &&
             !apr_table_get(r->err_headers_out, "WWW-Authenticate") &&
             ((entra_dir_conf *)ap_get_module_config(r->per_dir_config, &entra_module))
                     ->optional == 1) {
        st->forbidden = 1;
        if (!denied_answer(r, st))
            return;
        r->status = HTTP_UNAUTHORIZED;
    }
    else if (own && own->authn_done && !own->claims && r->status == HTTP_FORBIDDEN &&
             (own->authn_status == HTTP_UNAUTHORIZED || own->authn_status == HTTP_BAD_REQUEST)) {
        r->status = own->authn_status;
    }
    else if (own && own->claims && r->status == HTTP_FORBIDDEN && is_entra(r) &&
             !apr_table_get(r->err_headers_out, "WWW-Authenticate")) {
        /* An expression authenticated the caller and the rules denied it before httpd's
         * authentication phase: the same answers as any denied caller. */
        own->forbidden = 1;
        if (!denied_answer(r, own))
            return;
        r->status = HTTP_UNAUTHORIZED;
    }
    else
        return;
    r->status_line = NULL;
    ap_add_output_filter(STATUS_BODY_FILTER, NULL, r, r->connection);
}

/* Replaces the canned error page with the one of the status set above: 403 for a denied
 * caller, 401 for a missing or invalid token or a claims challenge, 400 for a malformed
 * request. */
static apr_status_t status_body_filter(ap_filter_t *f, apr_bucket_brigade *bb)
{
    static const char forbidden[] =
        "<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n"
        "<title>403 Forbidden</title>\n</head><body>\n<h1>Forbidden</h1>\n"
        "<p>The access token does not grant access to this resource.</p>\n</body></html>\n";
    static const char unauthorized[] =
        "<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n"
        "<title>401 Unauthorized</title>\n</head><body>\n<h1>Unauthorized</h1>\n"
        "<p>A valid access token (with the authentication context this resource needs) is "
        "required.</p>\n</body></html>\n";
    static const char bad_request[] =
        "<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n"
        "<title>400 Bad Request</title>\n</head><body>\n<h1>Bad Request</h1>\n"
        "<p>The request's access token is malformed or ambiguous.</p>\n</body></html>\n";
    const char *body = f->r->status == HTTP_UNAUTHORIZED ? unauthorized
                       : f->r->status == HTTP_BAD_REQUEST ? bad_request
                                                          : forbidden;
    apr_size_t len = strlen(body);
    apr_bucket *b;
    int eos = 0;

    for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b))
        if (APR_BUCKET_IS_EOS(b))
            eos = 1;
    if (!eos) {
        apr_brigade_cleanup(bb);
        return APR_SUCCESS;
    }
    apr_brigade_cleanup(bb);
    ap_remove_output_filter(f);
    ap_set_content_length(f->r, len);
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_immortal_create(body, len, f->c->bucket_alloc));
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(f->c->bucket_alloc));
    return ap_pass_brigade(f->next, bb);
}

void entra_authn_register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_post_read_request(post_read_request, NULL, NULL, APR_HOOK_FIRST);
    ap_hook_check_access_ex(access_ex, NULL, NULL, APR_HOOK_FIRST, AP_AUTH_INTERNAL_PER_CONF);
    ap_hook_check_authn(check_authn, NULL, NULL, APR_HOOK_MIDDLE, AP_AUTH_INTERNAL_PER_CONF);
    ap_hook_note_auth_failure(note_auth_failure, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_insert_error_filter(insert_error_filter, NULL, NULL, APR_HOOK_MIDDLE);
    ap_register_output_filter(STATUS_BODY_FILTER, status_body_filter, NULL, AP_FTYPE_RESOURCE);
}
