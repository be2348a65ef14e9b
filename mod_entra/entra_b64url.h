/* Strict base64url (RFC 4648 section 5, no padding) as JOSE requires. */
#ifndef ENTRA_B64URL_H
#define ENTRA_B64URL_H

#include <apr_pools.h>

/* Decodes exactly `len` chars; refuses padding, '+', '/', whitespace and non-canonical
 * trailing bits. The output is NUL-terminated for convenience. */
apr_status_t entra_b64url_decode(apr_pool_t *p, const char *s, apr_size_t len,
                                 unsigned char **out, apr_size_t *outlen);

/* True when `s` is three dot-separated runs of base64url characters (a compact JWS's
 * shape), checked without allocating: the cheap first test of an untrusted token. */
int entra_b64url_jws_shape(const char *s, apr_size_t len);

/* Encodes without padding. */
char *entra_b64url_encode(apr_pool_t *p, const unsigned char *d, apr_size_t len);

#endif
