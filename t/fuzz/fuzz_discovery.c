/* The discovery document and the JWKS it names, through the real key source: the input
 * is up to four documents separated by "\n--\n" (v2 discovery, v2 JWKS, v1 discovery,
 * v1 JWKS), served by the HTTP stub (an empty part answers 404). A cold acquire fetches
 * v2, the upkeep then merges v1, and the snapshot comes back out of the store's record.
 * With a fifth part, the record is evicted from the store before the upkeep runs (its v1
 * step then fails, and must say why, while the process keeps its keys).
 * Only https:// (or loopback) URLs are ever requested; a usable snapshot has the v2
 * document's issuer and at least one key. */
#include <string.h>

#include "entra_json.h"
#include "entra_keys.h"
#include "entra_log.h"
#include "fuzz.h"

#define META_V2 "https://login.example.test/t/v2.0/.well-known/openid-configuration"
#define META_V1 "https://login.example.test/t/.well-known/openid-configuration"

typedef struct {
    const uint8_t *part[5];
    size_t len[5];
    size_t n;
    unsigned jwks_requests, requests;
} served;

static apr_status_t answer(void *baton, apr_pool_t *p, const char *url,
                           const char *const *headers, entra_http_resp *resp, const char **why)
{
    served *s = baton;
    size_t i;

    FUZZ_ASSERT(entra_http_url_allowed(url));
    FUZZ_ASSERT(++s->requests <= 16);
    if (!strcmp(url, META_V2))
        i = 0;
    else if (!strcmp(url, META_V1))
        i = 2;
    else
        i = s->jwks_requests++ % 2 ? 3 : 1;
    if (i >= s->n || s->len[i] == 0) {
        resp->status = 404;
        return APR_SUCCESS;
    }
    resp->body = apr_pstrmemdup(p, (const char *)s->part[i], s->len[i]);
    resp->len = s->len[i];
    return APR_SUCCESS;
}

/* The issuer the v2 document names, parsed as the source parses it. */
static const char *v2_issuer(apr_pool_t *p, const served *s)
{
    json_t *doc;
    const char *why;
    if (s->n < 1 ||
        entra_json_parse_object(p, (const char *)s->part[0], s->len[0], 256 * 1024, &doc, &why))
        return NULL;
    return entra_json_str(doc, "issuer");
}

static void check(apr_pool_t *p, const served *s, entra_keys_snapshot *snap)
{
    const char *iss = v2_issuer(p, s);
    FUZZ_ASSERT(snap && snap->ks && snap->ks->keys->nelts > 0);
    FUZZ_ASSERT(iss && snap->iss.v2 && strcmp(iss, snap->iss.v2) == 0);
}

/* Every message the source logs names a reason; print them with FUZZ_VERBOSE set. */
static void sink(void *baton, entra_log_level level, const char *msg)
{
    FUZZ_ASSERT(msg && strncmp(msg, "ENTRA", 5) == 0);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "log: %s\n", msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    apr_pool_t *p;
    entra_store *store;
    entra_source *src;
    entra_keys_snapshot *snap = NULL;
    const char *why = NULL;
    served s;

    apr_pool_create(&p, fuzz_init());
    entra_log_set(sink, NULL, ENTRA_LOG_DEBUG);
    memset(&s, 0, sizeof(s));
    s.n = fuzz_split(data, size, s.part, s.len, 5);
    fuzz_http_set(answer, &s);
    FUZZ_ASSERT(entra_memstore_create(p, 64, &store) == APR_SUCCESS);
    FUZZ_ASSERT(entra_source_create(p, "fuzz", META_V2, META_V1, 1, &src) == APR_SUCCESS);
    src->store = store;

    if (entra_source_acquire(src, p, &snap, &why) == APR_SUCCESS) {
        check(p, &s, snap);
        entra_snapshot_release(snap);
        snap = NULL;
        if (s.n == 5)
            store->remove(store, "fuzz|rec");
        /* The upkeep's follow-up: only the v1 part, merged into the stored record. */
        entra_source_maintain(src, p);
        FUZZ_ASSERT(entra_source_acquire(src, p, &snap, &why) == APR_SUCCESS);
        check(p, &s, snap);
        FUZZ_ASSERT(snap->v1_tried == (s.n < 5));
        entra_snapshot_release(snap);
    }
    else
        FUZZ_ASSERT(snap == NULL && why && *why);
    entra_snapshot_release(src->cur); /* the source's own reference */
    fuzz_http_set(NULL, NULL);
    apr_pool_destroy(p);
    return 0;
}
