/* Sealing of records kept outside the machine (a networked EntraCache): AES-256-GCM with a
 * key derived by HKDF-SHA256 from a secret file, the record's logical name bound as
 * associated data (so records cannot be swapped), and opaque store names (an HMAC of the
 * logical name under a second derived key, so names reveal nothing). */
#ifndef ENTRA_SEAL_H
#define ENTRA_SEAL_H

#include <apr_pools.h>

#define ENTRA_SEAL_MIN_SECRET 32   /* bytes of key material the file must hold */
#define ENTRA_SEAL_MAX_SECRET 4096
#define ENTRA_SEAL_NAME_LEN 32     /* bytes of an opaque store name */
#define ENTRA_SEAL_OVERHEAD (1 + 8 + 12 + 16) /* version, expiry, nonce, tag */

typedef struct entra_seal entra_seal;

/* Derives the sealing and naming keys from `len` (>= ENTRA_SEAL_MIN_SECRET) bytes of
 * secret; the keys are wiped when `p` is cleared. */
apr_status_t entra_seal_create(apr_pool_t *p, const unsigned char *secret, apr_size_t len,
                               entra_seal **out, const char **why);

/* Reads a key file after checking that it is a regular file of 32 to 4096 bytes that no
 * one but its owner and group can read and only its owner can write; *why names the
 * problem otherwise. */
apr_status_t entra_seal_load(apr_pool_t *p, const char *path, entra_seal **out,
                             const char **why);

/* The opaque store name of a logical record name. */
void entra_seal_name(const entra_seal *s, const char *name,
                     unsigned char out[ENTRA_SEAL_NAME_LEN]);

/* version || expiry || nonce || ciphertext || tag of `len` bytes, in `p`; the name and the
 * expiry (seconds since the epoch) are authenticated with it, so whoever holds the cache
 * can neither move the record to another name nor keep it beyond its expiry. */
apr_status_t entra_seal_seal(const entra_seal *s, apr_pool_t *p, const char *name,
                             apr_int64_t expiry, const void *plain, apr_size_t len,
                             unsigned char **out, apr_size_t *outlen);

/* The plaintext (NUL-terminated, in `p`) of a record sealed for `name` with this key;
 * APR_TIMEUP when it is genuine but expired at `now` (seconds), APR_EGENERAL for anything
 * else: another key, another name, any changed byte, a short or unknown-version input. */
apr_status_t entra_seal_open(const entra_seal *s, apr_pool_t *p, const char *name,
                             apr_int64_t now, const unsigned char *in, apr_size_t len,
                             char **out, apr_size_t *outlen);

#endif
