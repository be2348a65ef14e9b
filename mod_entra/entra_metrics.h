/* Counters for the status page, exact across processes without a lock.
 *
 * One block of memory the host provides (anonymous shared memory that outlives graceful
 * restarts, in httpd) holds a header and a number of slots; each slot is an array of
 * 64-bit counters on its own cache lines. A process adds to one slot, chosen from its pid,
 * with relaxed atomic adds: two processes that land on the same slot still count exactly,
 * they only share a cache line. Readers sum every slot. No step takes a lock or makes a
 * system call, so the request path pays a few atomic adds.
 *
 * Without an attached block (the Lua module, tests) every add is a no-op. */
#ifndef ENTRA_METRICS_H
#define ENTRA_METRICS_H

#include <apr_pools.h>

/* Rejection reasons: short, stable codes (documented in README.md). */
typedef enum {
    ENTRA_R_MISSING_TOKEN = 0,
    ENTRA_R_MULTIPLE_TOKENS,
    ENTRA_R_MALFORMED_HEADER,
    ENTRA_R_MALFORMED,
    ENTRA_R_TOO_LARGE,
    ENTRA_R_UNSIGNED,
    ENTRA_R_ENCRYPTED,
    ENTRA_R_ALG_NOT_ALLOWED,
    ENTRA_R_MISSING_KID,
    ENTRA_R_CRIT,
    ENTRA_R_FOREIGN_AUDIENCE,
    ENTRA_R_EXPIRED,
    ENTRA_R_NOT_YET_VALID,
    ENTRA_R_ISSUED_IN_FUTURE,
    ENTRA_R_LIFETIME,
    ENTRA_R_BAD_TIME_CLAIM,
    ENTRA_R_BAD_ISSUER,
    ENTRA_R_TENANT_NOT_ALLOWED,
    ENTRA_R_BAD_AUDIENCE,
    ENTRA_R_UNKNOWN_KID,
    ENTRA_R_KEY_ISSUER,
    ENTRA_R_BAD_SIGNATURE,
    ENTRA_R_ALG_KEY_MISMATCH,
    ENTRA_R_MISSING_USER_CLAIM,
    ENTRA_R_NO_KEYS,
    ENTRA_R_INTERNAL,
    ENTRA_R_OTHER,
    ENTRA_R_COUNT
} entra_reason;

typedef enum { ENTRA_AUTHN_VALID = 0, ENTRA_AUTHN_INVALID, ENTRA_AUTHN_MISSING, ENTRA_AUTHN_ERROR } entra_authn_result;

/* Upper bounds of the validation-duration histogram, in nanoseconds (+Inf implied). */
#define ENTRA_HIST_BOUNDS                                                                     \
    { 10000ull, 25000ull, 50000ull, 100000ull, 250000ull, 500000ull, 1000000ull, 2500000ull,  \
      5000000ull, 10000000ull, 25000000ull, 100000000ull, 1000000000ull }
#define ENTRA_HIST_N 13
/* The same bounds in seconds, as Prometheus `le` labels. */
#define ENTRA_HIST_LABELS                                                                     \
    { "1e-05", "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",  \
      "0.01", "0.025", "0.1", "1" }

/* Outbound identities that get their own token-fetch counters. */
#define ENTRA_METRICS_IDENTITIES 32
#define ENTRA_METRICS_NAME_MAX 64

/* Counter indexes within a slot. */
enum {
    ENTRA_M_AUTHN = 0,                           /* + entra_authn_result */
    ENTRA_M_AUTHZ_GRANTED = ENTRA_M_AUTHN + 4,
    ENTRA_M_AUTHZ_DENIED,
    ENTRA_M_KEYS_OK,
    ENTRA_M_KEYS_ERROR,
    ENTRA_M_VERDICT_HIT,
    ENTRA_M_VERDICT_MISS,                        /* derived by entra_metrics_sum */
    ENTRA_M_DURATION_NS,                         /* sum of validation durations */
    ENTRA_M_DURATION_COUNT,                      /* derived: the sum of the buckets */
    ENTRA_M_HIST,                                /* + bucket, ENTRA_HIST_N + 1 of them */
    ENTRA_M_REASON = ENTRA_M_HIST + ENTRA_HIST_N + 1, /* + entra_reason */
    ENTRA_M_TOKEN = ENTRA_M_REASON + ENTRA_R_COUNT,   /* + 2 * identity + (ok ? 0 : 1) */
    ENTRA_M_COUNT = ENTRA_M_TOKEN + 2 * ENTRA_METRICS_IDENTITIES
};

/* This process's slot, or NULL: set by entra_metrics_use(). */
extern apr_uint64_t *entra_metrics_slot;

/* Adds `n` to counter `c` of this process's slot (relaxed: only the sum matters). */
static inline void entra_metrics_add(unsigned c, apr_uint64_t n)
{
    apr_uint64_t *s = entra_metrics_slot;
    if (s)
        __atomic_fetch_add(&s[c], n, __ATOMIC_RELAXED);
}

/* Bytes of memory for `slots` slots. */
apr_size_t entra_metrics_bytes(unsigned slots);

/* Lays out a zeroed block of `bytes` bytes (from entra_metrics_bytes) for `slots` slots.
 * Call once, before any process uses it. */
apr_status_t entra_metrics_init(void *mem, apr_size_t bytes, unsigned slots);

/* Makes this process count into the slot `key` (e.g. its pid) picks in `mem`, a block made
 * by entra_metrics_init; NULL stops counting. Call before the process's threads start. */
void entra_metrics_use(void *mem, unsigned long key);

/* Sums of every counter over every slot of `mem` into out[ENTRA_M_COUNT], with the
 * derived ones (ENTRA_M_DURATION_COUNT, ENTRA_M_VERDICT_MISS) filled in. */
void entra_metrics_sum(const void *mem, apr_uint64_t *out);

/* The index of outbound identity `name` in `mem`, adding it when `add` is set and there is
 * room (call with `add` only while no other process can add); -1 when absent or full. */
int entra_metrics_identity(void *mem, const char *name, int add);

/* The name of identity `i`, or NULL. */
const char *entra_metrics_identity_name(const void *mem, int i);

/* Monotonic nanoseconds, for durations (a vDSO call, no system call on Linux). */
apr_uint64_t entra_metrics_now(void);

/* One authentication decision: its result, the reason of a rejection, the start of the
 * validation (0 when no token was validated) and, for a validation, whether its verdict
 * came from a cache (1) or not (0). */
void entra_metrics_authn(entra_authn_result result, entra_reason reason, apr_uint64_t t0,
                         int cached);

/* The reason code for a rejection reason of the verifier (its `why` strings). */
entra_reason entra_metrics_reason(const char *why);

/* The stable name of a reason code ("expired", ...). */
const char *entra_metrics_reason_name(entra_reason r);

/* Counts one token fetch (all its retries) for identity `name`. */
void entra_metrics_token_fetch(const char *name, int ok);

#endif
