/* Claims in httpd expressions: the string function entra_claim, as %{entra_claim:tid} in
 * string expressions (mod_headers expr=, mod_rewrite) and entra_claim('azp') == '...' in
 * <If> and Require expr. A request that has not been authenticated yet when the function
 * is first evaluated (an <If> is merged, and Require expr runs, before httpd's
 * authentication phase) is authenticated there and then, once: the outcome is remembered
 * and check_authn answers with it later. */
#include <string.h>
#include <strings.h>

#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <ap_expr.h>
#include <apr_strings.h>

#include "mod_entra.h"

#define CLAIM_NAME_MAX 128

static const char *claim_fn(ap_expr_eval_ctx_t *ctx, const void *data, const char *arg)
{
    request_rec *r = ctx->r;
    entra_req_state *st;
    const char *v;
    (void)data;

    if (!r || !arg || !*arg)
        return "";
    st = entra_req_state_get(r);
    if (!st || !st->claims) {
        const char *t = ap_auth_type(r);
        if (!t || strcasecmp(t, "Entra") != 0)
            return "";
        entra_authenticate(r);
        st = entra_req_state_get(r);
    }
    if (!st || !st->claims)
        return "";
    v = entra_claim_text(r->pool, st->claims, arg);
    return v ? v : "";
}

static int expr_lookup(ap_expr_lookup_parms *parms)
{
    const char *c;

    if (parms->type != AP_EXPR_FUNC_STRING || strcasecmp(parms->name, "entra_claim") != 0)
        return DECLINED;
    /* A constant argument is checked once, at startup. */
    if (parms->arg) {
        for (c = parms->arg; *c; c++)
            if ((unsigned char)*c < 0x21 || *c == 0x7f)
                break;
        if (!*parms->arg || *c || strlen(parms->arg) > CLAIM_NAME_MAX) {
            *parms->err = apr_psprintf(parms->ptemp,
                                       "entra_claim: '%s' is not a claim name (1 to %d "
                                       "printable characters)",
                                       parms->arg, CLAIM_NAME_MAX);
            return !OK;
        }
    }
    *parms->func = (const void *)claim_fn;
    *parms->data = NULL;
    return OK;
}

void entra_expr_register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_expr_lookup(expr_lookup, NULL, NULL, APR_HOOK_MIDDLE);
}
