/* The validated-token table: what the machine already knows about a token's signature,
 * shared by every process without a lock.
 *
 * A fixed array of 96-byte slots in memory the caller provides (anonymous shared memory
 * made before httpd forks its children, or ordinary memory for a script), grouped in
 * buckets of four. Each slot is a sequence lock: a writer claims it with one compare-and-
 * swap (and gives up if another writer holds it; the table is a cache), readers copy it
 * and retry nothing: a torn copy is a miss. No step can block, so a process that dies
 * mid-write costs one slot, never the table.
 *
 * A slot holds no claims, only the verdict: SHA-256 of the token, a tag of the key source,
 * valid-until, the signature algorithm, and for a bad signature the reason and the app and
 * object ids the token claimed (for the log line of the next rejection). A hit still needs
 * the token's own claims, which the caller decodes: the table only saves the signature. */
#ifndef ENTRA_VTAB_H
#define ENTRA_VTAB_H

#include <apr_pools.h>

#define ENTRA_VTAB_SLOT_SIZE 96
#define ENTRA_VTAB_WAYS 4

/* The signature failures a slot can remember (entra_jwt_verify's reasons). */
#define ENTRA_WHY_BAD_SIGNATURE "invalid signature"
#define ENTRA_WHY_ALG_NOT_KEY "token algorithm does not match the signing key"

typedef struct entra_vtab entra_vtab;

typedef enum { ENTRA_VT_NONE = 0, ENTRA_VT_VALID = 1, ENTRA_VT_INVALID = 2 } entra_vt_kind;

typedef struct entra_vtab_entry {
    entra_vt_kind kind;
    int alg;             /* entra_alg of the signature */
    int reason;          /* ENTRA_VT_INVALID: index into entra_vtab_reason() */
    apr_int64_t until;   /* seconds since the epoch */
    int app_claim;       /* 0: none, 1: azp, 2: appid */
    int has_oid;
    unsigned char app[16], oid[16]; /* GUIDs, binary */
} entra_vtab_entry;

/* Bytes of memory for a table of at least `entries` entries (rounded up to whole buckets
 * of a power-of-two count, at least one). */
apr_size_t entra_vtab_bytes(unsigned entries);

/* A table over `mem` (`bytes` from entra_vtab_bytes, 8-byte aligned, zero-filled by the
 * caller; shared memory keeps its contents across attaches). The handle lives in `p`;
 * `seed` keys the bucket choice so a caller cannot aim tokens at one bucket. */
entra_vtab *entra_vtab_attach(apr_pool_t *p, void *mem, apr_size_t bytes, apr_uint64_t seed);

/* 1 and *out when (hash, tag) is present and live at `now`; 0 otherwise. */
int entra_vtab_get(entra_vtab *t, const unsigned char *hash, apr_uint64_t tag, apr_int64_t now,
                   entra_vtab_entry *out);

/* Stores (or replaces) the verdict; best effort: silently skipped when the slot it picks
 * is being written by someone else. */
void entra_vtab_put(entra_vtab *t, const unsigned char *hash, apr_uint64_t tag,
                    const entra_vtab_entry *e, apr_int64_t now);

/* Negative reasons a slot can hold: 1.. ; 0 when `why` is not one of them. */
int entra_vtab_reason_code(const char *why);
const char *entra_vtab_reason(int code);

/* A 64-bit tag of a string (FNV-1a), for source ids. */
apr_uint64_t entra_vtab_tag(const char *s);

/* GUID text <-> 16 bytes: parse returns 1 for the canonical 8-4-4-4-12 hex form; format
 * writes 36 lowercase characters and a NUL into out[37]. */
int entra_guid_parse(const char *s, unsigned char *out);
void entra_guid_format(const unsigned char *g, char *out);

#endif
