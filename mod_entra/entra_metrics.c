#include <string.h>
#include <time.h>

#include "entra_metrics.h"

#define MAGIC 0x656e747261636e74ull /* "entracnt" */
#define LINE 64

/* The block: this header, then `slots` slots of slot_bytes each. Names are written before
 * `identities` is raised (release), and read after it is loaded (acquire), so a process of
 * an older generation reading while the parent adds a name sees whole names only. */
typedef struct {
    apr_uint64_t magic;
    apr_uint32_t slots;
    apr_uint32_t slot_bytes;
    apr_uint32_t identities;
    apr_uint32_t pad;
    char names[ENTRA_METRICS_IDENTITIES][ENTRA_METRICS_NAME_MAX];
} header_t;

#define HEADER_BYTES ((sizeof(header_t) + LINE - 1) / LINE * LINE)
#define SLOT_BYTES ((ENTRA_M_COUNT * sizeof(apr_uint64_t) + LINE - 1) / LINE * LINE)

apr_uint64_t *entra_metrics_slot;
static void *block;

static const apr_uint64_t bounds[ENTRA_HIST_N] = ENTRA_HIST_BOUNDS;

apr_size_t entra_metrics_bytes(unsigned slots)
{
    return HEADER_BYTES + (apr_size_t)(slots ? slots : 1) * SLOT_BYTES;
}

apr_status_t entra_metrics_init(void *mem, apr_size_t bytes, unsigned slots)
{
    header_t *h = mem;
    if (!mem || !slots || bytes < entra_metrics_bytes(slots))
        return APR_EINVAL;
    h->slots = slots;
    h->slot_bytes = (apr_uint32_t)SLOT_BYTES;
    h->identities = 0;
    __atomic_store_n(&h->magic, MAGIC, __ATOMIC_RELEASE);
    return APR_SUCCESS;
}

static apr_uint64_t *slot_at(const void *mem, unsigned i)
{
    const header_t *h = mem;
    return (apr_uint64_t *)((char *)mem + HEADER_BYTES + (apr_size_t)i * h->slot_bytes);
}

void entra_metrics_use(void *mem, unsigned long key)
{
    const header_t *h = mem;
    if (!mem || __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != MAGIC) {
        block = NULL;
        entra_metrics_slot = NULL;
        return;
    }
    block = mem;
    entra_metrics_slot = slot_at(mem, (unsigned)(key % h->slots));
}

void entra_metrics_sum(const void *mem, apr_uint64_t *out)
{
    const header_t *h = mem;
    unsigned i, c;
    memset(out, 0, ENTRA_M_COUNT * sizeof(*out));
    if (!mem || __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != MAGIC)
        return;
    for (i = 0; i < h->slots; i++) {
        apr_uint64_t *s = slot_at(mem, i);
        for (c = 0; c < ENTRA_M_COUNT; c++)
            out[c] += __atomic_load_n(&s[c], __ATOMIC_RELAXED);
    }
    for (c = 0; c <= ENTRA_HIST_N; c++)
        out[ENTRA_M_DURATION_COUNT] += out[ENTRA_M_HIST + c];
    /* A hit is added after its bucket and read before it, so it never outnumbers them;
     * kept true here whatever the order of future changes. */
    if (out[ENTRA_M_VERDICT_HIT] > out[ENTRA_M_DURATION_COUNT])
        out[ENTRA_M_VERDICT_HIT] = out[ENTRA_M_DURATION_COUNT];
    out[ENTRA_M_VERDICT_MISS] = out[ENTRA_M_DURATION_COUNT] - out[ENTRA_M_VERDICT_HIT];
}

int entra_metrics_identity(void *mem, const char *name, int add)
{
    header_t *h = mem;
    apr_uint32_t n, i;
    if (!mem || !name || __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != MAGIC)
        return -1;
    n = __atomic_load_n(&h->identities, __ATOMIC_ACQUIRE);
    for (i = 0; i < n && i < ENTRA_METRICS_IDENTITIES; i++)
        if (strncmp(h->names[i], name, ENTRA_METRICS_NAME_MAX - 1) == 0 &&
            strlen(name) < ENTRA_METRICS_NAME_MAX)
            return (int)i;
    if (!add || n >= ENTRA_METRICS_IDENTITIES || strlen(name) >= ENTRA_METRICS_NAME_MAX)
        return -1;
    memcpy(h->names[n], name, strlen(name) + 1);
    __atomic_store_n(&h->identities, n + 1, __ATOMIC_RELEASE);
    return (int)n;
}

const char *entra_metrics_identity_name(const void *mem, int i)
{
    const header_t *h = mem;
    if (!mem || i < 0 || (apr_uint32_t)i >= __atomic_load_n(&h->identities, __ATOMIC_ACQUIRE))
        return NULL;
    return h->names[i];
}

apr_uint64_t entra_metrics_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (apr_uint64_t)ts.tv_sec * 1000000000ull + (apr_uint64_t)ts.tv_nsec;
}

void entra_metrics_authn(entra_authn_result result, entra_reason reason, apr_uint64_t t0,
                         int cached)
{
    apr_uint64_t *s = entra_metrics_slot;
    if (!s)
        return;
    __atomic_fetch_add(&s[ENTRA_M_AUTHN + (unsigned)result], 1, __ATOMIC_RELAXED);
    if (result != ENTRA_AUTHN_VALID && (unsigned)reason < ENTRA_R_COUNT)
        __atomic_fetch_add(&s[ENTRA_M_REASON + (unsigned)reason], 1, __ATOMIC_RELAXED);
    /* The count of validations is the sum of the buckets, and misses are validations
     * less hits (entra_metrics_sum): two adds fewer per request. */
    if (t0) {
        apr_uint64_t d = entra_metrics_now() - t0;
        unsigned b = 0;
        while (b < ENTRA_HIST_N && d > bounds[b])
            b++;
        __atomic_fetch_add(&s[ENTRA_M_HIST + b], 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&s[ENTRA_M_DURATION_NS], d, __ATOMIC_RELAXED);
        if (cached > 0)
            __atomic_fetch_add(&s[ENTRA_M_VERDICT_HIT], 1, __ATOMIC_RELAXED);
    }
}

void entra_metrics_token_fetch(const char *name, int ok)
{
    int i = entra_metrics_identity(block, name, 0);
    if (i >= 0)
        entra_metrics_add(ENTRA_M_TOKEN + 2 * (unsigned)i + (ok ? 0 : 1), 1);
}

static const char *const names[ENTRA_R_COUNT] = {
    [ENTRA_R_MISSING_TOKEN] = "missing_token",
    [ENTRA_R_MULTIPLE_TOKENS] = "multiple_tokens",
    [ENTRA_R_MALFORMED_HEADER] = "malformed_header",
    [ENTRA_R_MALFORMED] = "malformed",
    [ENTRA_R_TOO_LARGE] = "too_large",
    [ENTRA_R_UNSIGNED] = "unsigned",
    [ENTRA_R_ENCRYPTED] = "encrypted",
    [ENTRA_R_ALG_NOT_ALLOWED] = "alg_not_allowed",
    [ENTRA_R_MISSING_KID] = "missing_kid",
    [ENTRA_R_CRIT] = "crit",
    [ENTRA_R_FOREIGN_AUDIENCE] = "foreign_audience",
    [ENTRA_R_EXPIRED] = "expired",
    [ENTRA_R_NOT_YET_VALID] = "not_yet_valid",
    [ENTRA_R_ISSUED_IN_FUTURE] = "issued_in_future",
    [ENTRA_R_LIFETIME] = "lifetime",
    [ENTRA_R_BAD_TIME_CLAIM] = "bad_time_claim",
    [ENTRA_R_BAD_ISSUER] = "bad_issuer",
    [ENTRA_R_TENANT_NOT_ALLOWED] = "tenant_not_allowed",
    [ENTRA_R_BAD_AUDIENCE] = "bad_audience",
    [ENTRA_R_UNKNOWN_KID] = "unknown_kid",
    [ENTRA_R_KEY_ISSUER] = "key_issuer",
    [ENTRA_R_BAD_SIGNATURE] = "bad_signature",
    [ENTRA_R_ALG_KEY_MISMATCH] = "alg_key_mismatch",
    [ENTRA_R_MISSING_USER_CLAIM] = "missing_user_claim",
    [ENTRA_R_NO_KEYS] = "no_keys",
    [ENTRA_R_INTERNAL] = "internal",
    [ENTRA_R_OTHER] = "other",
};

/* The verifier's reasons (entra_jwt.c, entra_policy.c, entra_verify.c, entra_vtab.h),
 * matched by prefix; the first match wins. One table, so a new reason is one line. */
static const struct {
    const char *prefix;
    entra_reason code;
} why_codes[] = {
    {"token expired", ENTRA_R_EXPIRED},
    {"token not yet valid", ENTRA_R_NOT_YET_VALID},
    {"token issued in the future", ENTRA_R_ISSUED_IN_FUTURE},
    {"token lifetime exceeds", ENTRA_R_LIFETIME},
    {"token has no exp", ENTRA_R_BAD_TIME_CLAIM},
    {"token time claim", ENTRA_R_BAD_TIME_CLAIM},
    {"token audience", ENTRA_R_BAD_AUDIENCE},
    {"token has no audience", ENTRA_R_BAD_AUDIENCE},
    {"token tenant not allowed", ENTRA_R_TENANT_NOT_ALLOWED},
    {"token issuer", ENTRA_R_BAD_ISSUER},
    {"token has no issuer", ENTRA_R_BAD_ISSUER},
    {"token tid", ENTRA_R_BAD_ISSUER},
    {"no tenant configured", ENTRA_R_BAD_ISSUER},
    {"token signing key not found", ENTRA_R_UNKNOWN_KID},
    {"signing key belongs to another issuer", ENTRA_R_KEY_ISSUER},
    {"invalid signature", ENTRA_R_BAD_SIGNATURE},
    {"token algorithm does not match", ENTRA_R_ALG_KEY_MISMATCH},
    {"token algorithm not allowed", ENTRA_R_ALG_NOT_ALLOWED},
    {"unsigned token", ENTRA_R_UNSIGNED},
    {"encrypted tokens", ENTRA_R_ENCRYPTED},
    {"token too large", ENTRA_R_TOO_LARGE},
    {"token header has unsupported crit", ENTRA_R_CRIT},
    {"token header has no kid", ENTRA_R_MISSING_KID},
    {"token is for another audience", ENTRA_R_FOREIGN_AUDIENCE},
    {"token header", ENTRA_R_MALFORMED},
    {"token claims", ENTRA_R_MALFORMED},
    {"token is not", ENTRA_R_MALFORMED},
    {"empty token", ENTRA_R_MALFORMED},
    {"cannot hash", ENTRA_R_INTERNAL},
};

entra_reason entra_metrics_reason(const char *why)
{
    size_t i;
    size_t n;
    if (!why)
        return ENTRA_R_OTHER;
    /* "token has no <EntraRemoteUserClaim> claim" (mod_entra_authn.c), whatever the name. */
    n = strlen(why);
    if (strncmp(why, "token has no ", 13) == 0 && n > 19 && strcmp(why + n - 6, " claim") == 0)
        return ENTRA_R_MISSING_USER_CLAIM;
    for (i = 0; i < sizeof(why_codes) / sizeof(why_codes[0]); i++)
        if (strncmp(why, why_codes[i].prefix, strlen(why_codes[i].prefix)) == 0)
            return why_codes[i].code;
    return ENTRA_R_OTHER;
}

const char *entra_metrics_reason_name(entra_reason r)
{
    return (unsigned)r < ENTRA_R_COUNT ? names[r] : "other";
}
