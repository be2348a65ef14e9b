/* The status page (SetHandler entra-status: HTML, JSON, Prometheus), mod_status's "Entra"
 * section, and the shared memory the counters live in (entra_metrics.c).
 *
 * The counters' block is made once per httpd parent, from the process pool, and kept with
 * ap_retained_data_*: children of every generation of graceful restarts add to the same
 * block, so sums stay exact while old children finish their requests. Key sources and
 * outbound tokens are shown as the child serving the page sees them, brought up to date
 * from the machine's shared store first (never fetching). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_request.h>
#include <ap_mpm.h>
#include <mod_status.h>
#include <apr_optional_hooks.h>
#include <apr_shm.h>
#include <apr_strings.h>

#include "entra_keys.h"
#include "entra_metrics.h"
#include "entra_tokenstore.h"
#include "mod_entra.h"

APLOG_USE_MODULE(entra);

#define RETAINED_KEY "mod_entra_metrics"
#define HANDLER "entra-status"
#define MAX_SLOTS 4096

typedef struct {
    apr_shm_t *shm;
    void *mem;
} retained_t;

static void *metrics_mem;
static server_rec *main_server;

/* ------------------------------------------------------------------------ lifecycle */

static int post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    entra_srv_conf *sc = ap_get_module_config(s->module_config, &entra_module);
    retained_t *rt;
    apr_hash_index_t *hi;
    (void)pconf;
    (void)plog;

    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG)
        return OK;
    main_server = s;
    rt = ap_retained_data_get(RETAINED_KEY);
    if (!rt) {
        rt = ap_retained_data_create(RETAINED_KEY, sizeof(*rt));
        memset(rt, 0, sizeof(*rt));
    }
    if (!rt->mem) {
        int limit = 0;
        unsigned slots;
        apr_size_t bytes;
        apr_status_t rv;
        /* ServerLimit cannot change across restarts: one slot per possible child. */
        if (ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &limit) != APR_SUCCESS || limit < 1)
            limit = 1;
        slots = limit > MAX_SLOTS ? MAX_SLOTS : (unsigned)limit;
        bytes = entra_metrics_bytes(slots);
        /* The process pool lives as long as the parent: the block outlives generations. */
        rv = apr_shm_create(&rt->shm, bytes, NULL, s->process->pool);
        if (rv != APR_SUCCESS) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, rv, s,
                         "ENTRA0750: no shared memory for status counters (%" APR_SIZE_T_FMT
                         " bytes): counting is off",
                         bytes);
            return OK;
        }
        memset(apr_shm_baseaddr_get(rt->shm), 0, bytes);
        entra_metrics_init(apr_shm_baseaddr_get(rt->shm), bytes, slots);
        rt->mem = apr_shm_baseaddr_get(rt->shm);
    }
    metrics_mem = rt->mem;
    /* Names of outbound identities, so token fetches count per identity. */
    for (hi = apr_hash_first(ptemp, sc->identities); hi; hi = apr_hash_next(hi)) {
        const void *k;
        apr_hash_this(hi, &k, NULL, NULL);
        if (entra_metrics_identity(metrics_mem, k, 1) < 0)
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                         "ENTRA0751: identity %s: no room for its status counters (at most %d "
                         "identities of up to %d characters are counted)",
                         (const char *)k, ENTRA_METRICS_IDENTITIES, ENTRA_METRICS_NAME_MAX - 1);
    }
    return OK;
}

static void child_init(apr_pool_t *p, server_rec *s)
{
    (void)p;
    (void)s;
    entra_metrics_use(metrics_mem, (unsigned long)getpid());
}

/* ------------------------------------------------------------------------ authorization */

/* Runs only for requests that passed authorization: a granted Entra caller. */
static int count_granted(request_rec *r)
{
    entra_req_state *st;
    if (r->main)
        return DECLINED;
    st = ap_get_module_config(r->request_config, &entra_module);
    if (st && st->claims && !st->authz_counted) {
        st->authz_counted = 1;
        entra_metrics_add(ENTRA_M_AUTHZ_GRANTED, 1);
    }
    return DECLINED;
}

/* An authenticated caller whose request never reached the fixups was denied. */
static int count_denied(request_rec *r)
{
    for (; r; r = r->next) {
        entra_req_state *st = ap_get_module_config(r->request_config, &entra_module);
        if (st && st->claims && !st->authz_counted) {
            st->authz_counted = 1;
            entra_metrics_add(ENTRA_M_AUTHZ_DENIED, 1);
        }
    }
    return DECLINED;
}

/* ------------------------------------------------------------------------ gathering */

typedef struct {
    apr_int64_t now;
    apr_uint64_t c[ENTRA_M_COUNT];
    apr_array_header_t *keys;   /* entra_source_status */
    apr_array_header_t *tokens; /* entra_tokensrc_status */
    long vtab_entries;
    int counting;
} view_t;

static int by_meta(const void *a, const void *b)
{
    const entra_source_status *x = a, *y = b;
    return strcmp(x->meta, y->meta);
}

static int by_identity(const void *a, const void *b)
{
    const entra_tokensrc_status *x = a, *y = b;
    int c = strcmp(x->identity, y->identity);
    return c ? c : strcmp(x->resource, y->resource);
}

static void gather(request_rec *r, view_t *v)
{
    apr_array_header_t *list;
    entra_srv_conf *sc = ap_get_module_config((main_server ? main_server : r->server)->module_config,
                                              &entra_module);
    int i;

    memset(v, 0, sizeof(*v));
    v->now = (apr_int64_t)apr_time_sec(apr_time_now());
    v->counting = metrics_mem != NULL;
    entra_metrics_sum(metrics_mem, v->c);
    v->vtab_entries = sc->token_cache_entries == ENTRA_UNSET ? ENTRA_TOKEN_CACHE_DEFAULT
                                                             : sc->token_cache_entries;
    list = entra_sources_list(r->pool);
    v->keys = apr_array_make(r->pool, list->nelts + 1, sizeof(entra_source_status));
    for (i = 0; i < list->nelts; i++)
        entra_source_status_get(APR_ARRAY_IDX(list, i, entra_source *), r->pool,
                                apr_array_push(v->keys));
    qsort(v->keys->elts, (size_t)v->keys->nelts, sizeof(entra_source_status), by_meta);
    list = entra_proxy_token_sources(r->pool);
    v->tokens = apr_array_make(r->pool, list->nelts + 1, sizeof(entra_tokensrc_status));
    for (i = 0; i < list->nelts; i++)
        entra_tokensrc_status_get(APR_ARRAY_IDX(list, i, entra_tokensrc *), r->pool,
                                  apr_array_push(v->tokens));
    qsort(v->tokens->elts, (size_t)v->tokens->nelts, sizeof(entra_tokensrc_status), by_identity);
}

static const char *const authn_names[] = {"valid", "invalid", "missing", "error"};
static const char *const hist_labels[ENTRA_HIST_N] = ENTRA_HIST_LABELS;

static apr_uint64_t token_total(const view_t *v, int ok)
{
    apr_uint64_t n = 0;
    int i;
    for (i = 0; i < ENTRA_METRICS_IDENTITIES; i++)
        n += v->c[ENTRA_M_TOKEN + 2 * i + (ok ? 0 : 1)];
    return n;
}

/* ------------------------------------------------------------------------ JSON */

static json_t *jtime(apr_int64_t t)
{
    return t ? json_integer((json_int_t)t) : json_null();
}

static json_t *jstr(const char *s)
{
    return s ? json_string(s) : json_null();
}

static int send_json(request_rec *r, const view_t *v)
{
    json_t *root = json_object(), *a, *o, *b;
    char *text;
    apr_uint64_t cum = 0;
    int i, j;

    json_object_set_new(root, "time", json_integer((json_int_t)v->now));
    json_object_set_new(root, "pid", json_integer((json_int_t)getpid()));
    json_object_set_new(root, "counting", json_boolean(v->counting));
    a = json_array();
    for (i = 0; i < v->keys->nelts; i++) {
        const entra_source_status *k = &APR_ARRAY_IDX(v->keys, i, entra_source_status);
        json_t *kids = json_array();
        for (j = 0; j < k->kids->nelts; j++)
            json_array_append_new(kids, json_string(APR_ARRAY_IDX(k->kids, j, const char *)));
        o = json_object();
        json_object_set_new(o, "metadata", json_string(k->meta));
        json_object_set_new(o, "issuer", jstr(k->issuer));
        json_object_set_new(o, "issuer_v1", jstr(k->issuer_v1));
        json_object_set_new(o, "kids", kids);
        json_object_set_new(o, "fetched", jtime(k->fetched));
        json_object_set_new(o, "age_seconds",
                            k->fetched ? json_integer((json_int_t)(v->now - k->fetched)) : json_null());
        json_object_set_new(o, "next_refresh", jtime(k->next_refresh));
        json_object_set_new(o, "last_error", jstr(k->last_error));
        json_object_set_new(o, "last_error_at", jtime(k->last_error_at));
        json_array_append_new(a, o);
    }
    json_object_set_new(root, "key_sources", a);
    a = json_array();
    for (i = 0; i < v->tokens->nelts; i++) {
        const entra_tokensrc_status *t = &APR_ARRAY_IDX(v->tokens, i, entra_tokensrc_status);
        o = json_object();
        json_object_set_new(o, "identity", json_string(t->identity));
        json_object_set_new(o, "resource", json_string(t->resource));
        json_object_set_new(o, "source", json_string(t->source));
        json_object_set_new(o, "expires", jtime(t->expires));
        json_object_set_new(o, "expires_in_seconds",
                            t->expires ? json_integer((json_int_t)(t->expires - v->now)) : json_null());
        json_object_set_new(o, "last_fetch", jtime(t->obtained));
        json_object_set_new(o, "refresh_at", jtime(t->refresh_at));
        json_object_set_new(o, "failures", json_integer(t->failures));
        json_object_set_new(o, "last_error", jstr(t->last_error));
        json_object_set_new(o, "next_attempt", jtime(t->next_attempt));
        json_array_append_new(a, o);
    }
    json_object_set_new(root, "outbound_tokens", a);
    json_object_set_new(root, "verdict_cache",
                        json_pack("{s:I, s:I, s:I}", "entries", (json_int_t)v->vtab_entries,
                                  "hits", (json_int_t)v->c[ENTRA_M_VERDICT_HIT], "misses",
                                  (json_int_t)v->c[ENTRA_M_VERDICT_MISS]));
    o = json_object();
    for (i = 0; i < 4; i++)
        json_object_set_new(o, authn_names[i], json_integer((json_int_t)v->c[ENTRA_M_AUTHN + i]));
    json_object_set_new(root, "authn", o);
    json_object_set_new(root, "authz",
                        json_pack("{s:I, s:I}", "granted", (json_int_t)v->c[ENTRA_M_AUTHZ_GRANTED],
                                  "denied", (json_int_t)v->c[ENTRA_M_AUTHZ_DENIED]));
    o = json_object();
    for (i = 0; i < ENTRA_R_COUNT; i++)
        json_object_set_new(o, entra_metrics_reason_name((entra_reason)i),
                            json_integer((json_int_t)v->c[ENTRA_M_REASON + i]));
    json_object_set_new(root, "rejections", o);
    json_object_set_new(root, "key_fetches",
                        json_pack("{s:I, s:I}", "ok", (json_int_t)v->c[ENTRA_M_KEYS_OK], "error",
                                  (json_int_t)v->c[ENTRA_M_KEYS_ERROR]));
    o = json_object();
    for (i = 0; i < ENTRA_METRICS_IDENTITIES; i++) {
        const char *name = entra_metrics_identity_name(metrics_mem, i);
        if (name)
            json_object_set_new(o, name,
                                json_pack("{s:I, s:I}", "ok", (json_int_t)v->c[ENTRA_M_TOKEN + 2 * i],
                                          "error", (json_int_t)v->c[ENTRA_M_TOKEN + 2 * i + 1]));
    }
    json_object_set_new(root, "token_fetches", o);
    b = json_object();
    for (i = 0; i <= ENTRA_HIST_N; i++) {
        cum += v->c[ENTRA_M_HIST + i];
        json_object_set_new(b, i < ENTRA_HIST_N ? hist_labels[i] : "+Inf",
                            json_integer((json_int_t)cum));
    }
    json_object_set_new(root, "validation_duration",
                        json_pack("{s:I, s:f, s:o}", "count",
                                  (json_int_t)v->c[ENTRA_M_DURATION_COUNT], "sum_seconds",
                                  v->c[ENTRA_M_DURATION_NS] / 1e9, "buckets", b));
    text = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text)
        return HTTP_INTERNAL_SERVER_ERROR;
    ap_set_content_type(r, "application/json");
    ap_rputs(text, r);
    ap_rputs("\n", r);
    free(text);
    return OK;
}

/* ------------------------------------------------------------------------ Prometheus */

/* A label value: backslash, double quote and line feed escaped. */
static const char *lv(apr_pool_t *p, const char *s)
{
    apr_size_t n = 0;
    const char *c;
    char *out, *o;
    for (c = s; *c; c++)
        n += (*c == '\\' || *c == '"' || *c == '\n') ? 2 : 1;
    o = out = apr_palloc(p, n + 1);
    for (c = s; *c; c++) {
        if (*c == '\\' || *c == '"' || *c == '\n') {
            *o++ = '\\';
            *o++ = *c == '\n' ? 'n' : *c;
        }
        else
            *o++ = *c;
    }
    *o = '\0';
    return out;
}

static void head(request_rec *r, const char *name, const char *type, const char *help)
{
    ap_rprintf(r, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int send_prometheus(request_rec *r, const view_t *v)
{
    apr_pool_t *p = r->pool;
    apr_hash_t *seen = apr_hash_make(p);
    apr_uint64_t cum = 0;
    int i;

    ap_set_content_type(r, "text/plain; version=0.0.4; charset=utf-8");
    head(r, "entra_authn_total", "counter",
         "Bearer-token authentications by result (invalid includes 400 answers; error is 503 "
         "without keys and 500).");
    for (i = 0; i < 4; i++)
        ap_rprintf(r, "entra_authn_total{result=\"%s\"} %" APR_UINT64_T_FMT "\n", authn_names[i],
                   v->c[ENTRA_M_AUTHN + i]);
    head(r, "entra_authz_total", "counter", "Authorization outcomes of authenticated callers.");
    ap_rprintf(r, "entra_authz_total{result=\"granted\"} %" APR_UINT64_T_FMT "\n",
               v->c[ENTRA_M_AUTHZ_GRANTED]);
    ap_rprintf(r, "entra_authz_total{result=\"denied\"} %" APR_UINT64_T_FMT "\n",
               v->c[ENTRA_M_AUTHZ_DENIED]);
    head(r, "entra_rejections_total", "counter", "Rejected requests by reason code.");
    for (i = 0; i < ENTRA_R_COUNT; i++)
        ap_rprintf(r, "entra_rejections_total{reason=\"%s\"} %" APR_UINT64_T_FMT "\n",
                   entra_metrics_reason_name((entra_reason)i), v->c[ENTRA_M_REASON + i]);
    head(r, "entra_key_fetches_total", "counter",
         "Discovery and JWKS fetches made by this machine, by outcome.");
    ap_rprintf(r, "entra_key_fetches_total{outcome=\"ok\"} %" APR_UINT64_T_FMT "\n",
               v->c[ENTRA_M_KEYS_OK]);
    ap_rprintf(r, "entra_key_fetches_total{outcome=\"error\"} %" APR_UINT64_T_FMT "\n",
               v->c[ENTRA_M_KEYS_ERROR]);
    head(r, "entra_keys_age_seconds", "gauge", "Age of the signing keys in use, by issuer.");
    for (i = 0; i < v->keys->nelts; i++) {
        const entra_source_status *k = &APR_ARRAY_IDX(v->keys, i, entra_source_status);
        /* One series per issuer: sources differing only in settings share it. */
        if (!k->issuer || apr_hash_get(seen, k->issuer, APR_HASH_KEY_STRING))
            continue;
        apr_hash_set(seen, k->issuer, APR_HASH_KEY_STRING, k);
        ap_rprintf(r, "entra_keys_age_seconds{issuer=\"%s\"} %" APR_INT64_T_FMT "\n",
                   lv(p, k->issuer), v->now - k->fetched);
    }
    head(r, "entra_token_fetches_total", "counter",
         "Outbound token fetches (each with its retries), by identity and outcome.");
    for (i = 0; i < ENTRA_METRICS_IDENTITIES; i++) {
        const char *name = entra_metrics_identity_name(metrics_mem, i);
        if (!name)
            continue;
        ap_rprintf(r, "entra_token_fetches_total{identity=\"%s\",outcome=\"ok\"} %" APR_UINT64_T_FMT
                      "\n",
                   lv(p, name), v->c[ENTRA_M_TOKEN + 2 * i]);
        ap_rprintf(r,
                   "entra_token_fetches_total{identity=\"%s\",outcome=\"error\"} %" APR_UINT64_T_FMT
                   "\n",
                   lv(p, name), v->c[ENTRA_M_TOKEN + 2 * i + 1]);
    }
    head(r, "entra_token_expires_in_seconds", "gauge",
         "Seconds until the outbound token in use expires, by identity and resource.");
    for (i = 0; i < v->tokens->nelts; i++) {
        const entra_tokensrc_status *t = &APR_ARRAY_IDX(v->tokens, i, entra_tokensrc_status);
        if (t->expires)
            ap_rprintf(r,
                       "entra_token_expires_in_seconds{identity=\"%s\",resource=\"%s\"} "
                       "%" APR_INT64_T_FMT "\n",
                       lv(p, t->identity), lv(p, t->resource), t->expires - v->now);
    }
    head(r, "entra_verdict_cache_total", "counter",
         "Token validations answered from the verdict caches (hit) or not (miss).");
    ap_rprintf(r, "entra_verdict_cache_total{result=\"hit\"} %" APR_UINT64_T_FMT "\n",
               v->c[ENTRA_M_VERDICT_HIT]);
    ap_rprintf(r, "entra_verdict_cache_total{result=\"miss\"} %" APR_UINT64_T_FMT "\n",
               v->c[ENTRA_M_VERDICT_MISS]);
    head(r, "entra_verdict_cache_entries", "gauge", "Capacity of the shared verdict table.");
    ap_rprintf(r, "entra_verdict_cache_entries %ld\n", v->vtab_entries);
    head(r, "entra_validation_duration_seconds", "histogram",
         "Time spent validating a presented token.");
    for (i = 0; i <= ENTRA_HIST_N; i++) {
        cum += v->c[ENTRA_M_HIST + i];
        if (i < ENTRA_HIST_N)
            ap_rprintf(r, "entra_validation_duration_seconds_bucket{le=\"%s\"} %" APR_UINT64_T_FMT
                          "\n",
                       hist_labels[i], cum);
        else
            ap_rprintf(r, "entra_validation_duration_seconds_bucket{le=\"+Inf\"} %" APR_UINT64_T_FMT
                          "\n",
                       cum);
    }
    ap_rprintf(r, "entra_validation_duration_seconds_sum %.9f\n",
               v->c[ENTRA_M_DURATION_NS] / 1e9);
    ap_rprintf(r, "entra_validation_duration_seconds_count %" APR_UINT64_T_FMT "\n",
               v->c[ENTRA_M_DURATION_COUNT]);
    return OK;
}

/* ------------------------------------------------------------------------ HTML */

static const char *when(apr_pool_t *p, apr_int64_t t)
{
    char buf[APR_RFC822_DATE_LEN];
    if (!t)
        return "-";
    apr_rfc822_date(buf, apr_time_from_sec(t));
    return apr_pstrdup(p, buf);
}

/* "3 h 2 min", "45 s", "in 5 min" / "5 min ago" by sign. */
static const char *span(apr_pool_t *p, apr_int64_t s)
{
    apr_int64_t a = s < 0 ? -s : s;
    if (a < 120)
        return apr_psprintf(p, "%" APR_INT64_T_FMT " s", a);
    if (a < 7200)
        return apr_psprintf(p, "%" APR_INT64_T_FMT " min", a / 60);
    if (a < 172800)
        return apr_psprintf(p, "%" APR_INT64_T_FMT " h %" APR_INT64_T_FMT " min", a / 3600,
                            a % 3600 / 60);
    return apr_psprintf(p, "%" APR_INT64_T_FMT " d %" APR_INT64_T_FMT " h", a / 86400,
                        a % 86400 / 3600);
}

static const char *rel(apr_pool_t *p, apr_int64_t t, apr_int64_t now)
{
    if (!t)
        return "-";
    return t >= now ? apr_pstrcat(p, "in ", span(p, t - now), NULL)
                    : apr_pstrcat(p, span(p, now - t), " ago", NULL);
}

#define E(s) ap_escape_html(r->pool, (s))

static const char css[] =
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;"
    "background:#f4f6f9;color:#1b2330}"
    "header{background:#0f4c81;color:#fff;padding:14px 28px}"
    "header h1{font-size:20px;margin:0}header p{margin:2px 0 0;opacity:.85;font-size:12px}"
    "main{padding:18px 28px;display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));"
    "gap:18px}"
    "section{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:12px 16px}"
    "section.wide{grid-column:1/-1}"
    "h2{font-size:15px;margin:0 0 8px;color:#0f4c81}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #edf0f4;vertical-align:top}"
    "th{font-weight:600;color:#56627a;font-size:12px;text-transform:uppercase}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "code{font:12px ui-monospace,Menlo,Consolas,monospace;background:#eef2f7;padding:1px 4px;"
    "border-radius:3px}"
    ".ok{color:#17803d}.bad{color:#b42318;font-weight:600}.muted{color:#8792a5}"
    ".tiles{display:flex;gap:10px;flex-wrap:wrap}"
    ".tile{flex:1;min-width:90px;border:1px solid #edf0f4;border-radius:6px;padding:8px}"
    ".tile b{display:block;font-size:22px}.tile span{color:#56627a;font-size:12px}";

static void tile(request_rec *r, const char *label, apr_uint64_t n, const char *cls)
{
    ap_rprintf(r, "<div class=\"tile\"><b class=\"%s\" id=\"%s\">%" APR_UINT64_T_FMT
                  "</b><span>%s</span></div>",
               cls, label, n, label);
}

static int send_html(request_rec *r, const view_t *v)
{
    int i, j, any;

    ap_set_content_type(r, "text/html; charset=utf-8");
    ap_rprintf(r,
               "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
               "<title>mod_entra status</title><style>%s</style></head><body>\n"
               "<header><h1>mod_entra status</h1><p>%s &middot; %s &middot; served by pid %ld"
               "%s &middot; also as <a style=\"color:#fff\" href=\"?format=json\">JSON</a> and "
               "<a style=\"color:#fff\" href=\"?format=prometheus\">Prometheus</a></p></header>"
               "\n<main>\n",
               css, E(ap_get_server_name(r)), when(r->pool, v->now), (long)getpid(),
               v->counting ? "" : " &middot; counters off");

    ap_rputs("<section class=\"wide\" id=\"keys\"><h2>Key sources</h2><table><tr><th>Issuer</th>"
             "<th>Key ids</th><th>Fetched</th><th>Age</th><th>Next refresh</th>"
             "<th>Last error</th></tr>\n",
             r);
    for (i = 0; i < v->keys->nelts; i++) {
        const entra_source_status *k = &APR_ARRAY_IDX(v->keys, i, entra_source_status);
        ap_rprintf(r, "<tr><td><code>%s</code>", E(k->issuer ? k->issuer : "(no keys yet)"));
        if (k->issuer_v1)
            ap_rprintf(r, "<br><code>%s</code>", E(k->issuer_v1));
        ap_rprintf(r, "<br><span class=\"muted\">%s</span></td><td>", E(k->meta));
        for (j = 0; j < k->kids->nelts; j++)
            ap_rprintf(r, "%s<code>%s</code>", j ? "<br>" : "",
                       E(APR_ARRAY_IDX(k->kids, j, const char *)));
        if (!k->kids->nelts)
            ap_rputs("<span class=\"bad\">none</span>", r);
        ap_rprintf(r, "</td><td>%s</td><td>%s</td><td>%s</td><td class=\"%s\">%s%s%s</td></tr>\n",
                   when(r->pool, k->fetched),
                   k->fetched ? span(r->pool, v->now - k->fetched) : "-",
                   rel(r->pool, k->next_refresh, v->now),
                   /* red while it matters: the machine's current failure, or newer than
                    * the keys in use */
                   k->last_error && (!k->last_error_at || k->last_error_at >= k->fetched)
                       ? "bad"
                       : "muted",
                   k->last_error ? E(k->last_error) : "none",
                   k->last_error_at ? " &middot; " : "",
                   k->last_error_at ? rel(r->pool, k->last_error_at, v->now) : "");
    }
    if (!v->keys->nelts)
        ap_rputs("<tr><td colspan=\"6\" class=\"muted\">no AuthType Entra sections</td></tr>", r);
    ap_rputs("</table></section>\n", r);

    ap_rputs("<section class=\"wide\" id=\"tokens\"><h2>Outbound tokens</h2><table><tr>"
             "<th>Identity</th><th>Resource</th><th>Source</th><th>Expires in</th>"
             "<th>Last fetch</th><th>Failures</th></tr>\n",
             r);
    for (i = 0; i < v->tokens->nelts; i++) {
        const entra_tokensrc_status *t = &APR_ARRAY_IDX(v->tokens, i, entra_tokensrc_status);
        ap_rprintf(r, "<tr><td>%s</td><td><code>%s</code></td><td>%s</td><td class=\"%s\">%s</td>"
                      "<td>%s</td><td class=\"n %s\">%d%s%s</td></tr>\n",
                   E(t->identity), E(t->resource), E(t->source),
                   t->expires > v->now ? "ok" : "bad",
                   t->expires ? (t->expires > v->now ? span(r->pool, t->expires - v->now)
                                                     : "expired")
                              : "no token",
                   rel(r->pool, t->obtained, v->now), t->failures ? "bad" : "", t->failures,
                   t->last_error ? ": " : "", t->last_error ? E(t->last_error) : "");
    }
    if (!v->tokens->nelts)
        ap_rputs("<tr><td colspan=\"6\" class=\"muted\">no EntraProxyToken</td></tr>", r);
    ap_rputs("</table></section>\n", r);

    ap_rputs("<section id=\"authn\"><h2>Requests</h2><div class=\"tiles\">", r);
    tile(r, "valid", v->c[ENTRA_M_AUTHN + ENTRA_AUTHN_VALID], "ok");
    tile(r, "invalid", v->c[ENTRA_M_AUTHN + ENTRA_AUTHN_INVALID], "bad");
    tile(r, "missing", v->c[ENTRA_M_AUTHN + ENTRA_AUTHN_MISSING], "");
    tile(r, "error", v->c[ENTRA_M_AUTHN + ENTRA_AUTHN_ERROR], "bad");
    ap_rputs("</div><div class=\"tiles\" style=\"margin-top:10px\">", r);
    tile(r, "granted", v->c[ENTRA_M_AUTHZ_GRANTED], "ok");
    tile(r, "denied", v->c[ENTRA_M_AUTHZ_DENIED], "bad");
    ap_rputs("</div></section>\n", r);

    ap_rputs("<section id=\"rejections\"><h2>Rejections by reason</h2><table>", r);
    for (i = 0, any = 0; i < ENTRA_R_COUNT; i++) {
        if (!v->c[ENTRA_M_REASON + i])
            continue;
        any = 1;
        ap_rprintf(r, "<tr><td><code>%s</code></td><td class=\"n\">%" APR_UINT64_T_FMT
                      "</td></tr>",
                   entra_metrics_reason_name((entra_reason)i), v->c[ENTRA_M_REASON + i]);
    }
    if (!any)
        ap_rputs("<tr><td class=\"muted\">none</td></tr>", r);
    ap_rputs("</table></section>\n", r);

    ap_rprintf(r, "<section id=\"verdicts\"><h2>Verdict table</h2><table>"
                  "<tr><td>Size (entries)</td><td class=\"n\">%ld</td></tr>"
                  "<tr><td>Hits</td><td class=\"n\">%" APR_UINT64_T_FMT "</td></tr>"
                  "<tr><td>Misses</td><td class=\"n\">%" APR_UINT64_T_FMT "</td></tr>"
                  "<tr><td>Validations</td><td class=\"n\">%" APR_UINT64_T_FMT "</td></tr>"
                  "<tr><td>Mean validation time</td><td class=\"n\">%.1f &micro;s</td></tr>"
                  "</table></section>\n",
               v->vtab_entries, v->c[ENTRA_M_VERDICT_HIT], v->c[ENTRA_M_VERDICT_MISS],
               v->c[ENTRA_M_DURATION_COUNT],
               v->c[ENTRA_M_DURATION_COUNT]
                   ? v->c[ENTRA_M_DURATION_NS] / 1e3 / (double)v->c[ENTRA_M_DURATION_COUNT]
                   : 0.0);

    ap_rprintf(r, "<section id=\"fetches\"><h2>Fetches</h2><table><tr><th></th><th>ok</th>"
                  "<th>error</th></tr><tr><td>Signing keys</td><td class=\"n\">%" APR_UINT64_T_FMT
                  "</td><td class=\"n\">%" APR_UINT64_T_FMT "</td></tr>",
               v->c[ENTRA_M_KEYS_OK], v->c[ENTRA_M_KEYS_ERROR]);
    for (i = 0; i < ENTRA_METRICS_IDENTITIES; i++) {
        const char *name = entra_metrics_identity_name(metrics_mem, i);
        if (name)
            ap_rprintf(r, "<tr><td>Tokens of %s</td><td class=\"n\">%" APR_UINT64_T_FMT
                          "</td><td class=\"n\">%" APR_UINT64_T_FMT "</td></tr>",
                       E(name), v->c[ENTRA_M_TOKEN + 2 * i], v->c[ENTRA_M_TOKEN + 2 * i + 1]);
    }
    ap_rputs("</table></section>\n</main></body></html>\n", r);
    return OK;
}

/* ------------------------------------------------------------------------ handler */

static const char *format_arg(request_rec *r)
{
    const char *a = r->args;
    while (a && *a) {
        const char *amp = strchr(a, '&'), *end = amp ? amp : a + strlen(a);
        if (end - a > 7 && strncmp(a, "format=", 7) == 0)
            return apr_pstrmemdup(r->pool, a + 7, (apr_size_t)(end - a - 7));
        a = amp ? amp + 1 : NULL;
    }
    return "html";
}

static int status_handler(request_rec *r)
{
    const char *fmt;
    view_t v;

    if (!r->handler || strcmp(r->handler, HANDLER) != 0)
        return DECLINED;
    r->allowed |= (AP_METHOD_BIT << M_GET);
    if (r->method_number != M_GET)
        return HTTP_METHOD_NOT_ALLOWED;
    fmt = format_arg(r);
    if (strcmp(fmt, "html") && strcmp(fmt, "json") && strcmp(fmt, "prometheus"))
        return HTTP_BAD_REQUEST;
    gather(r, &v);
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (r->header_only) {
        ap_set_content_type(r, !strcmp(fmt, "json")         ? "application/json"
                               : !strcmp(fmt, "prometheus") ? "text/plain; version=0.0.4"
                                                            : "text/html; charset=utf-8");
        return OK;
    }
    if (!strcmp(fmt, "json"))
        return send_json(r, &v);
    if (!strcmp(fmt, "prometheus"))
        return send_prometheus(r, &v);
    return send_html(r, &v);
}

/* ------------------------------------------------------------------------ mod_status */

static int status_hook(request_rec *r, int flags)
{
    view_t v;
    apr_int64_t oldest = -1;
    int i;

    gather(r, &v);
    for (i = 0; i < v.keys->nelts; i++) {
        const entra_source_status *k = &APR_ARRAY_IDX(v.keys, i, entra_source_status);
        if (k->fetched && v.now - k->fetched > oldest)
            oldest = v.now - k->fetched;
    }
    if (flags & AP_STATUS_SHORT) {
        ap_rprintf(r, "EntraAuthnValid: %" APR_UINT64_T_FMT "\n",
                   v.c[ENTRA_M_AUTHN + ENTRA_AUTHN_VALID]);
        ap_rprintf(r, "EntraAuthnInvalid: %" APR_UINT64_T_FMT "\n",
                   v.c[ENTRA_M_AUTHN + ENTRA_AUTHN_INVALID]);
        ap_rprintf(r, "EntraAuthnMissing: %" APR_UINT64_T_FMT "\n",
                   v.c[ENTRA_M_AUTHN + ENTRA_AUTHN_MISSING]);
        ap_rprintf(r, "EntraAuthnError: %" APR_UINT64_T_FMT "\n",
                   v.c[ENTRA_M_AUTHN + ENTRA_AUTHN_ERROR]);
        ap_rprintf(r, "EntraAuthzGranted: %" APR_UINT64_T_FMT "\n", v.c[ENTRA_M_AUTHZ_GRANTED]);
        ap_rprintf(r, "EntraAuthzDenied: %" APR_UINT64_T_FMT "\n", v.c[ENTRA_M_AUTHZ_DENIED]);
        ap_rprintf(r, "EntraVerdictHits: %" APR_UINT64_T_FMT "\n", v.c[ENTRA_M_VERDICT_HIT]);
        ap_rprintf(r, "EntraVerdictMisses: %" APR_UINT64_T_FMT "\n", v.c[ENTRA_M_VERDICT_MISS]);
        ap_rprintf(r, "EntraKeyFetchesOK: %" APR_UINT64_T_FMT "\n", v.c[ENTRA_M_KEYS_OK]);
        ap_rprintf(r, "EntraKeyFetchesError: %" APR_UINT64_T_FMT "\n", v.c[ENTRA_M_KEYS_ERROR]);
        ap_rprintf(r, "EntraTokenFetchesOK: %" APR_UINT64_T_FMT "\n", token_total(&v, 1));
        ap_rprintf(r, "EntraTokenFetchesError: %" APR_UINT64_T_FMT "\n", token_total(&v, 0));
        ap_rprintf(r, "EntraKeySources: %d\n", v.keys->nelts);
        if (oldest >= 0)
            ap_rprintf(r, "EntraKeysOldestAge: %" APR_INT64_T_FMT "\n", oldest);
        ap_rprintf(r, "EntraOutboundTokens: %d\n", v.tokens->nelts);
        return OK;
    }
    ap_rputs("<hr />\n<h2>Entra</h2>\n<dl>\n", r);
    ap_rprintf(r, "<dt>Authentications: %" APR_UINT64_T_FMT " valid, %" APR_UINT64_T_FMT
                  " invalid, %" APR_UINT64_T_FMT " missing, %" APR_UINT64_T_FMT " errors</dt>\n",
               v.c[ENTRA_M_AUTHN + ENTRA_AUTHN_VALID], v.c[ENTRA_M_AUTHN + ENTRA_AUTHN_INVALID],
               v.c[ENTRA_M_AUTHN + ENTRA_AUTHN_MISSING], v.c[ENTRA_M_AUTHN + ENTRA_AUTHN_ERROR]);
    ap_rprintf(r, "<dt>Authorization: %" APR_UINT64_T_FMT " granted, %" APR_UINT64_T_FMT
                  " denied</dt>\n",
               v.c[ENTRA_M_AUTHZ_GRANTED], v.c[ENTRA_M_AUTHZ_DENIED]);
    ap_rprintf(r, "<dt>Verdict caches: %" APR_UINT64_T_FMT " hits, %" APR_UINT64_T_FMT
                  " misses</dt>\n",
               v.c[ENTRA_M_VERDICT_HIT], v.c[ENTRA_M_VERDICT_MISS]);
    ap_rprintf(r, "<dt>Fetches: keys %" APR_UINT64_T_FMT " ok / %" APR_UINT64_T_FMT
                  " failed, tokens %" APR_UINT64_T_FMT " ok / %" APR_UINT64_T_FMT " failed</dt>\n",
               v.c[ENTRA_M_KEYS_OK], v.c[ENTRA_M_KEYS_ERROR], token_total(&v, 1),
               token_total(&v, 0));
    for (i = 0; i < v.keys->nelts; i++) {
        const entra_source_status *k = &APR_ARRAY_IDX(v.keys, i, entra_source_status);
        ap_rprintf(r, "<dt>Keys of %s: %d, fetched %s</dt>\n",
                   ap_escape_html(r->pool, k->issuer ? k->issuer : k->meta), k->kids->nelts,
                   rel(r->pool, k->fetched, v.now));
    }
    ap_rputs("</dl>\n", r);
    return OK;
}

void entra_status_register_hooks(apr_pool_t *p)
{
    (void)p;
    /* After mod_entra.c's post_config, which parses the identities this one names. */
    ap_hook_post_config(post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(child_init, NULL, NULL, APR_HOOK_FIRST);
    ap_hook_handler(status_handler, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_fixups(count_granted, NULL, NULL, APR_HOOK_FIRST);
    ap_hook_log_transaction(count_denied, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ap, status_hook, status_hook, NULL, NULL, APR_HOOK_MIDDLE);
}
