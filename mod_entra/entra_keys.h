/* Signing keys of one issuer source: discovery + JWKS fetched once per machine (through the
 * shared store), kept per process as refcounted snapshots, refreshed in the background,
 * refetched on unknown kids at most once per interval, and kept when a refresh fails. */
#ifndef ENTRA_KEYS_H
#define ENTRA_KEYS_H

#include <apr_pools.h>
#include <apr_thread_mutex.h>

#include "entra_http.h"
#include "entra_jwk.h"
#include "entra_policy.h"
#include "entra_store.h"

typedef struct entra_keys_snapshot {
    apr_pool_t *pool;
    volatile apr_uint32_t refs;
    entra_keyset *ks;
    entra_issuers iss;
    apr_int64_t fetched; /* seconds since the epoch of the fetch that produced it */
    apr_int64_t version; /* unique per fetch */
    apr_time_t v2_at;    /* when the fetch of the v2 document and keys in it began */
    int v1_tried;        /* the v1 document was part of that fetch (or there is none) */
} entra_keys_snapshot;

typedef struct entra_source {
    const char *id;      /* store key prefix, unique per source */
    apr_uint64_t tag;    /* entra_vtab_tag(id): the source in the verdict table */
    const char *meta_v2; /* discovery document (v2, or the custom metadata URL) */
    const char *meta_v1; /* Entra v1 discovery document, or NULL */
    int entra;           /* Entra issuer rules apply */
    const char *jwks_query; /* appended to jwks_uri (e.g. "appid=<id>"), or NULL */
    entra_http_opts http;
    long refresh_interval; /* seconds between background refreshes */
    long refetch_interval; /* minimum seconds between unknown-kid refetches */
    long max_stale;        /* seconds keys stay usable after their last successful fetch */
    entra_store *store;    /* set before first use */
    /* A counter in memory shared by the machine's processes, raised by every stored key set:
     * a process that sees it move reads the store at once instead of up to
     * STORE_CHECK_SECONDS later, so a withdrawn key stops everywhere together. NULL: none. */
    apr_uint64_t *epoch;

    /* per process */
    apr_thread_mutex_t *mu;
    entra_keys_snapshot *cur;
    apr_int64_t checked_at;
    apr_uint64_t seen_epoch; /* *epoch when this process last read the store */
    char last_error[256];    /* the last failed fetch of this process, for the status page */
    apr_int64_t last_error_at;
} entra_source;

/* Creates a source (mutex included) in `p`. */
apr_status_t entra_source_create(apr_pool_t *p, const char *id, const char *meta_v2,
                                 const char *meta_v1, int entra, entra_source **out);

/* A referenced snapshot usable now. With nothing usable cached, one caller on the machine
 * fetches while the others wait, at most the fetch timeout plus 1 s (and never past the
 * moment http.cancel is set): APR_EAGAIN then means "keys unobtainable" and *why says why. */
apr_status_t entra_source_acquire(entra_source *src, apr_pool_t *p, entra_keys_snapshot **out,
                                  const char **why);

/* `kid` is not in `have`: returns a referenced snapshot that may hold it, after at most
 * one refetch per refetch interval machine-wide (waiting for a fetch in progress). */
entra_keys_snapshot *entra_source_refetch_for_kid(entra_source *src, apr_pool_t *p,
                                                  entra_keys_snapshot *have, const char *kid);

void entra_snapshot_release(entra_keys_snapshot *snap);

/* Background upkeep: fetches when nothing is cached or a refresh is due. */
void entra_source_maintain(entra_source *src, apr_pool_t *p);

/* What the status page shows of a source: never key material, only ids and times. */
typedef struct entra_source_status {
    const char *meta;          /* discovery document */
    const char *issuer;        /* from the keys in use, NULL without keys */
    const char *issuer_v1;
    apr_array_header_t *kids;  /* const char *, of the keys in use */
    apr_int64_t fetched;       /* 0 without keys */
    apr_int64_t next_refresh;  /* when the background refresh is due */
    const char *last_error;    /* the machine's current fetch failure, else this process's last */
    apr_int64_t last_error_at; /* 0 when the failure is the machine's current one */
} entra_source_status;

/* Fills *st from the shared store's current record (never fetching). */
void entra_source_status_get(entra_source *src, apr_pool_t *p, entra_source_status *st);

#endif
