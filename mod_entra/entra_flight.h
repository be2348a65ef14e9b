/* One fetch at a time per machine, bounded waits and failure backoff: the mechanism the key
 * sets (entra_keys.c) and the outbound tokens (entra_tokenstore.c) share. Every wait here
 * sleeps in steps of at most ENTRA_WAIT_STEP and ends at its deadline or as soon as the
 * cancel flag (set when the process exits) becomes non-zero. */
#ifndef ENTRA_FLIGHT_H
#define ENTRA_FLIGHT_H

#include <apr_pools.h>
#include <apr_time.h>

#include "entra_store.h"

/* The longest step of any wait: how late a wait may notice a cancel. */
#define ENTRA_WAIT_STEP apr_time_from_msec(100)

/* The longest backoff any failure or Retry-After can impose, in seconds. */
#define ENTRA_BACKOFF_MAX 300

/* True when the flag exists and is set. */
int entra_cancelled(const volatile int *cancel);

/* Sleeps until `until`, in steps of at most ENTRA_WAIT_STEP. APR_SUCCESS when `until` came,
 * APR_EINTR as soon as *cancel is set. */
apr_status_t entra_sleep_until(apr_time_t until, const volatile int *cancel);

typedef struct entra_flight {
    entra_store *store;
    const char *lease;             /* store key of the machine-wide lease */
    apr_time_t deadline;           /* neither the holder nor a waiter goes past it */
    apr_interval_time_t lease_ttl; /* the lease outlives the deadline by this much, so a
                                      holder that died frees it then */
    apr_interval_time_t step;      /* between looks at the holder's progress */
    const volatile int *cancel;
    int roomed;                    /* a waiter needs a place in the waiting room */
    void *baton;
    /* The store holds a result newer than the caller's (the caller remembers what it had). */
    int (*newer)(void *baton, apr_pool_t *p);
    /* The holder's work; it must itself end by `deadline` and on cancel. */
    apr_status_t (*fetch)(void *baton, apr_pool_t *p, apr_time_t deadline, const char **why);
    /* For waiters: the failure the holder recorded (1 with *why set), or 0. */
    int (*failed)(void *baton, apr_pool_t *p, const char **why);
} entra_flight;

/* Takes the lease and fetches, or waits for whoever holds it. APR_SUCCESS: a newer result is
 * in the store. Otherwise *why says why: the holder's failure, APR_EAGAIN (the lease went
 * away with nothing new), APR_TIMEUP (the deadline came), APR_EINTR (cancelled) or
 * APR_EBUSY (the flight is `roomed` and the waiting room is full, see
 * entra_flight_room_init). */
apr_status_t entra_flight_run(const entra_flight *f, apr_pool_t *p, const char **why);

/* The waiting room: how many callers may wait on a fetch another one holds, so that a burst
 * against a hanging authority cannot occupy every worker and starve routes that need no
 * fetch. `slots` (ENTRA_ROOM_BYTES(n) bytes of memory shared by the machine's processes,
 * zeroed) holds the machine-wide places, each the deadline of its waiter (a waiter that
 * died frees its place when that passes); `per_process` (0: no limit) bounds the waiters
 * of one process. The caller over either limit gets APR_EBUSY at once. Before this is
 * called (unit tests, tools), waits are not limited. */
#define ENTRA_ROOM_BYTES(n) ((apr_size_t)(n) * sizeof(apr_uint64_t))
void entra_flight_room_init(apr_uint64_t *slots, int n, int per_process);

/* A failure record: the n-th failure in a row, no new attempt before `next` (seconds since
 * the epoch), and the reason. */
typedef struct entra_backoff {
    int n;
    apr_int64_t next;
    const char *err;
} entra_backoff;

/* The record under `key` (1), or 0 when there is none. */
int entra_backoff_get(entra_store *s, apr_pool_t *p, const char *key, entra_backoff *out);

/* True when the record under `key` still forbids an attempt; *why then says why and
 * *retry_after (may be NULL) how many seconds are left. */
int entra_backoff_active(entra_store *s, apr_pool_t *p, const char *key, const char **why,
                         long *retry_after);

/* base * 2^(n-1) seconds for the n-th failure, at most `max`; never overflows. */
long entra_backoff_delay(int n, long base, long max);

/* Records one more failure that forbids attempts for `delay` seconds (clamped to
 * 0..ENTRA_BACKOFF_MAX); the count survives an hour. Returns the new count. */
int entra_backoff_fail(entra_store *s, apr_pool_t *p, const char *key, long delay,
                       const char *err);

void entra_backoff_clear(entra_store *s, const char *key);

/* A Retry-After header value in seconds, clamped to 0..ENTRA_BACKOFF_MAX; -1 when it is not
 * a plain number of seconds (absent, negative, a date or garbage). */
long entra_retry_after_parse(const char *value);

#endif
