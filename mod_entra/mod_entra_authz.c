/* Require entra-role / entra-scope / entra-app / entra-claim / entra-app-only / entra-user /
 * entra-group / entra-wid / entra-acrs over verified claims. */
#include <string.h>

#include <httpd.h>
#include <http_config.h>
#include <http_log.h>
#include <http_request.h>
#include <mod_auth.h>
#include <ap_provider.h>
#include <apr_strings.h>

#include "entra_claims.h"
#include "mod_entra.h"

APLOG_USE_MODULE(entra);

typedef struct {
    const char *claim;          /* entra-claim only */
    apr_array_header_t *values; /* const char * */
    const char *challenge;      /* entra-acrs: claims request for the first value */
} require_args;

static const char *parse_words(cmd_parms *cmd, const char *line, int with_claim,
                               const void **parsed)
{
    require_args *a = apr_pcalloc(cmd->pool, sizeof(*a));
    const char *w;

    a->values = apr_array_make(cmd->pool, 4, sizeof(const char *));
    if (with_claim) {
        a->claim = ap_getword_conf(cmd->pool, &line);
        if (!*a->claim)
            return "Require entra-claim needs a claim name and one or more values";
    }
    while (*(w = ap_getword_conf(cmd->pool, &line)))
        APR_ARRAY_PUSH(a->values, const char *) = w;
    if (a->values->nelts == 0)
        return apr_psprintf(cmd->pool, "Require %s needs at least one value",
                            with_claim ? "entra-claim <name>"
                                       : "entra-role/scope/app/group/wid/acrs");
    *parsed = a;
    return NULL;
}

static const char *parse_plain(cmd_parms *cmd, const char *line, const void **parsed)
{
    return parse_words(cmd, line, 0, parsed);
}

static const char *parse_claim(cmd_parms *cmd, const char *line, const void **parsed)
{
    return parse_words(cmd, line, 1, parsed);
}

static const char *parse_acrs(cmd_parms *cmd, const char *line, const void **parsed)
{
    const char *err = parse_words(cmd, line, 0, parsed);
    require_args *a = (require_args *)*parsed;
    if (err)
        return err;
    /* Built once: the 401 only copies it. */
    a->challenge = entra_claims_acrs_challenge(cmd->pool, APR_ARRAY_IDX(a->values, 0, const char *));
    return a->challenge ? NULL : "Require entra-acrs: cannot build the claims challenge";
}

static const char *parse_none(cmd_parms *cmd, const char *line, const void **parsed)
{
    (void)parsed;
    if (*ap_getword_conf(cmd->temp_pool, &line))
        return "Require entra-app-only / entra-user take no arguments";
    return NULL;
}

static int wanted(const require_args *a, const char *v, apr_size_t len)
{
    int i;
    for (i = 0; i < a->values->nelts; i++) {
        const char *w = APR_ARRAY_IDX(a->values, i, const char *);
        if (strlen(w) == len && memcmp(w, v, len) == 0)
            return 1;
    }
    return 0;
}

/* Claims of an authenticated Entra caller, or why there are none. A CORS preflight let
 * through by EntraAllowPreflight is granted with *claims NULL: see CLAIMS_OR_RETURN. */
static authz_status claims_of(request_rec *r, json_t **claims)
{
    entra_req_state *st = entra_req_state_get(r);
    *claims = NULL;
    if (!r->user)
        return st && st->preflight ? AUTHZ_GRANTED : AUTHZ_DENIED_NO_USER;
    if (!st || !st->claims)
        return AUTHZ_DENIED;
    *claims = st->claims;
    return AUTHZ_GRANTED;
}

/* Returns from the provider unless there are claims to look at. */
#define CLAIMS_OR_RETURN(r, claims)                                                                \
    do {                                                                                           \
        authz_status s_ = claims_of((r), &(claims));                                               \
        if (s_ != AUTHZ_GRANTED || !(claims))                                                      \
            return s_;                                                                             \
    } while (0)

/* A denial with its reason for ENTRA_ERROR. */
static authz_status deny(request_rec *r, const char *why)
{
    entra_note_denied(r, entra_req_state_ensure(r), why);
    return AUTHZ_DENIED;
}

#define VALUES(a) ((const char *const *)(a)->values->elts), ((a)->values->nelts)

/* A string claim, or any string element of an array claim, equals a wanted value. */
static int claim_matches(const require_args *a, json_t *v)
{
    size_t i;
    json_t *e;
    char buf[64];

    if (json_is_string(v))
        return wanted(a, json_string_value(v), json_string_length(v));
    if (json_is_array(v)) {
        json_array_foreach(v, i, e)
        {
            if (json_is_string(e) && wanted(a, json_string_value(e), json_string_length(e)))
                return 1;
        }
        return 0;
    }
    if (json_is_integer(v)) {
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return wanted(a, buf, strlen(buf));
    }
    if (json_is_boolean(v))
        return wanted(a, json_is_true(v) ? "true" : "false", json_is_true(v) ? 4 : 5);
    return 0;
}

static authz_status check_role(request_rec *r, const char *line, const void *parsed)
{
    json_t *claims, *roles, *e;

    size_t i;
    (void)line;
    CLAIMS_OR_RETURN(r, claims);
    roles = json_object_get(claims, "roles");
    /* Entra issues roles as an array of strings; any other shape grants nothing. */
    if (json_is_array(roles))
        json_array_foreach(roles, i, e)
        {
            if (json_is_string(e) && wanted(parsed, json_string_value(e), json_string_length(e)))
                return AUTHZ_GRANTED;
        }
    return deny(r, "no required app role");
}

static authz_status check_scope(request_rec *r, const char *line, const void *parsed)
{
    json_t *claims, *scp;

    const char *p;
    (void)line;
    CLAIMS_OR_RETURN(r, claims);
    scp = json_object_get(claims, "scp");
    if (!json_is_string(scp))
        return deny(r, "no required scope");
    for (p = json_string_value(scp); *p;) {
        apr_size_t n = strcspn(p, " ");
        if (n && wanted(parsed, p, n))
            return AUTHZ_GRANTED;
        p += n;
        while (*p == ' ')
            p++;
    }
    return deny(r, "no required scope");
}

static authz_status check_app(request_rec *r, const char *line, const void *parsed)
{
    json_t *claims, *app, *ver;

    (void)line;
    CLAIMS_OR_RETURN(r, claims);
    /* v2 tokens name the caller in azp, v1 tokens in appid. */
    ver = json_object_get(claims, "ver");
    if (json_is_string(ver) && !strcmp(json_string_value(ver), "1.0"))
        app = json_object_get(claims, "appid");
    else {
        app = json_object_get(claims, "azp");
        if (!json_is_string(app) && !json_is_string(ver))
            app = json_object_get(claims, "appid");
    }
    return json_is_string(app) && wanted(parsed, json_string_value(app), json_string_length(app))
               ? AUTHZ_GRANTED
               : deny(r, "caller application not allowed");
}

static authz_status check_claim(request_rec *r, const char *line, const void *parsed)
{
    const require_args *a = parsed;
    json_t *claims;

    (void)line;
    CLAIMS_OR_RETURN(r, claims);
    return claim_matches(a, json_object_get(claims, a->claim)) ? AUTHZ_GRANTED
                                                               : deny(r, "claim value not allowed");
}

static authz_status check_kind(request_rec *r, entra_caller want)
{
    json_t *claims;

    CLAIMS_OR_RETURN(r, claims);
    if (entra_claims_caller(claims) == want)
        return AUTHZ_GRANTED;
    return deny(r, want == ENTRA_CALLER_APP ? "not an app-only token" : "not a user token");
}

static authz_status check_app_only(request_rec *r, const char *line, const void *parsed)
{
    (void)line;
    (void)parsed;
    return check_kind(r, ENTRA_CALLER_APP);
}

static authz_status check_user(request_rec *r, const char *line, const void *parsed)
{
    (void)line;
    (void)parsed;
    return check_kind(r, ENTRA_CALLER_USER);
}

static authz_status check_group(request_rec *r, const char *line, const void *parsed)
{
    json_t *claims;

    (void)line;
    CLAIMS_OR_RETURN(r, claims);
    switch (entra_claims_in_groups(claims, VALUES((const require_args *)parsed))) {
    case ENTRA_MEMBER_YES:
        return AUTHZ_GRANTED;
    case ENTRA_MEMBER_OVERAGE:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "ENTRA0702: Require entra-group denied: the token is in groups overage "
                      "(too many groups to list; use app roles or group filtering)");
        return deny(r, "groups overage");
    default:
        return deny(r, "not in a required group");
    }
}

static authz_status check_wid(request_rec *r, const char *line, const void *parsed)
{
    json_t *claims;

    (void)line;
    CLAIMS_OR_RETURN(r, claims);
    return entra_claims_array_has(claims, "wids", VALUES((const require_args *)parsed), 1)
               ? AUTHZ_GRANTED
               : deny(r, "no required directory role");
}

static authz_status check_acrs(request_rec *r, const char *line, const void *parsed)
{
    const require_args *a = parsed;
    entra_req_state *st;
    json_t *claims;

    (void)line;
    CLAIMS_OR_RETURN(r, claims);
    if (entra_claims_array_has(claims, "acrs", VALUES(a), 0))
        return AUTHZ_GRANTED;
    /* Only a client that declared it can answer a claims challenge gets one; the first
     * entra-acrs rule that denied names the context. */
    st = entra_req_state_ensure(r);
    if (entra_claims_client_cp1(claims) && !st->claims_challenge)
        st->claims_challenge = a->challenge;
    return deny(r, "authentication context required");
}

static const authz_provider role_provider = {check_role, parse_plain};
static const authz_provider scope_provider = {check_scope, parse_plain};
static const authz_provider app_provider = {check_app, parse_plain};
static const authz_provider claim_provider = {check_claim, parse_claim};
static const authz_provider app_only_provider = {check_app_only, parse_none};
static const authz_provider user_provider = {check_user, parse_none};
static const authz_provider group_provider = {check_group, parse_plain};
static const authz_provider wid_provider = {check_wid, parse_plain};
static const authz_provider acrs_provider = {check_acrs, parse_acrs};

void entra_authz_register_providers(apr_pool_t *p)
{
    static const struct {
        const char *name;
        const authz_provider *provider;
    } providers[] = {
        {"entra-role", &role_provider},         {"entra-scope", &scope_provider},
        {"entra-app", &app_provider},           {"entra-claim", &claim_provider},
        {"entra-app-only", &app_only_provider}, {"entra-user", &user_provider},
        {"entra-group", &group_provider},       {"entra-wid", &wid_provider},
        {"entra-acrs", &acrs_provider},
    };
    size_t i;
    for (i = 0; i < sizeof(providers) / sizeof(providers[0]); i++)
        ap_register_auth_provider(p, AUTHZ_PROVIDER_GROUP, providers[i].name,
                                  AUTHZ_PROVIDER_VERSION, providers[i].provider,
                                  AP_AUTH_INTERNAL_PER_CONF);
}
