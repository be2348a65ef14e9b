/* Acquired tokens per (identity, resource), shared by every process through the store:
 * one fetch at a time machine-wide (others wait), proactive refresh with jitter, the
 * sources' retry rules, and the IMDS limits (5 in flight, 20 per second per machine). */
#ifndef ENTRA_TOKENSTORE_H
#define ENTRA_TOKENSTORE_H

#include <apr_pools.h>
#include <apr_thread_mutex.h>

#include "entra_cred.h"
#include "entra_store.h"

typedef struct entra_tokensrc {
    const entra_cred *cred;
    const char *resource; /* as configured (scope or resource) */
    const char *id;       /* store key prefix */
    entra_store *store;
    long wait_ms;         /* longest a request waits for a fetch */

    /* per process: the last token seen */
    apr_thread_mutex_t *mu;
    char *tok; /* malloc'd */
    apr_int64_t exp, obtained, refresh_at, version, checked_at;
} entra_tokensrc;

apr_status_t entra_tokensrc_create(apr_pool_t *p, const entra_cred *cred, const char *resource,
                                   entra_store *store, long wait_ms, entra_tokensrc **out);

/* A token usable now (copied into `p`). With none cached, one caller on the machine
 * fetches while the others wait, at most wait_ms. On failure returns APR_EAGAIN, *why
 * says why and *retry_after when to try again (seconds). */
apr_status_t entra_tokensrc_get(entra_tokensrc *ts, apr_pool_t *p, const char **token,
                                long *retry_after, const char **why);

/* Background upkeep: fetches at start (warm-up) and refreshes when due. */
void entra_tokensrc_maintain(entra_tokensrc *ts, apr_pool_t *p);

/* Expiry of the token this process holds (0 if none): for tests and status. */
apr_int64_t entra_tokensrc_expiry(entra_tokensrc *ts);

/* What the status page shows of a token source: never the token. */
typedef struct entra_tokensrc_status {
    const char *identity, *resource, *source;
    apr_int64_t expires;    /* 0 without a token */
    apr_int64_t obtained;   /* when the token in use was fetched */
    apr_int64_t refresh_at;
    int failures;           /* consecutive failed fetches, machine-wide */
    const char *last_error; /* of the last failed fetch while failures continue */
    apr_int64_t next_attempt;
} entra_tokensrc_status;

/* Fills *st from the shared store's current record (never fetching). */
void entra_tokensrc_status_get(entra_tokensrc *ts, apr_pool_t *p, entra_tokensrc_status *st);

#endif
