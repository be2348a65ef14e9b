#include <apr_strings.h>

#include "entra_b64url.h"

static const char enc_tab[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int dec_char(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

apr_status_t entra_b64url_decode(apr_pool_t *p, const char *s, apr_size_t len,
                                 unsigned char **out, apr_size_t *outlen)
{
    apr_size_t i, o = 0, rem = len % 4;
    unsigned char *buf;
    apr_uint32_t acc = 0;
    int bits = 0;

    *out = NULL;
    *outlen = 0;
    if (rem == 1)
        return APR_EINVAL;
    buf = apr_palloc(p, len / 4 * 3 + 3);
    for (i = 0; i < len; i++) {
        int v = dec_char((unsigned char)s[i]);
        if (v < 0)
            return APR_EINVAL;
        acc = (acc << 6) | (apr_uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Leftover bits must be zero, otherwise two encodings decode alike. */
    if (acc != 0)
        return APR_EINVAL;
    buf[o] = '\0';
    *out = buf;
    *outlen = o;
    return APR_SUCCESS;
}

char *entra_b64url_encode(apr_pool_t *p, const unsigned char *d, apr_size_t len)
{
    char *out = apr_palloc(p, (len + 2) / 3 * 4 + 1), *o = out;
    apr_size_t i;

    for (i = 0; i + 2 < len; i += 3) {
        *o++ = enc_tab[d[i] >> 2];
        *o++ = enc_tab[((d[i] & 3) << 4) | (d[i + 1] >> 4)];
        *o++ = enc_tab[((d[i + 1] & 15) << 2) | (d[i + 2] >> 6)];
        *o++ = enc_tab[d[i + 2] & 63];
    }
    if (len - i == 1) {
        *o++ = enc_tab[d[i] >> 2];
        *o++ = enc_tab[(d[i] & 3) << 4];
    }
    else if (len - i == 2) {
        *o++ = enc_tab[d[i] >> 2];
        *o++ = enc_tab[((d[i] & 3) << 4) | (d[i + 1] >> 4)];
        *o++ = enc_tab[(d[i + 1] & 15) << 2];
    }
    *o = '\0';
    return out;
}
