#include <apr_strings.h>

#include "entra_b64url.h"

static const char enc_tab[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* 0..63 for the base64url alphabet, 0xff for anything else. */
static const unsigned char dec_tab[256] = {
#define X 0xff
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, 62, X, X, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, X, X,
    X, X, X, X, X, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
    23, 24, 25, X, X, X, X, 63, X, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41,
    42, 43, 44, 45, 46, 47, 48, 49, 50, 51, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X
#undef X
};

apr_status_t entra_b64url_decode(apr_pool_t *p, const char *s, apr_size_t len,
                                 unsigned char **out, apr_size_t *outlen)
{
    const unsigned char *in = (const unsigned char *)s;
    apr_size_t i, o = 0, full = len / 4 * 4, rem = len % 4;
    unsigned char *buf;
    apr_uint32_t v, bad = 0;

    *out = NULL;
    *outlen = 0;
    if (rem == 1)
        return APR_EINVAL;
    buf = apr_palloc(p, len / 4 * 3 + 3);
    /* Four characters at a time; any invalid one sets a high bit in `bad`. */
    for (i = 0; i < full; i += 4) {
        v = ((apr_uint32_t)dec_tab[in[i]] << 18) | ((apr_uint32_t)dec_tab[in[i + 1]] << 12) |
            ((apr_uint32_t)dec_tab[in[i + 2]] << 6) | dec_tab[in[i + 3]];
        bad |= dec_tab[in[i]] | dec_tab[in[i + 1]] | dec_tab[in[i + 2]] | dec_tab[in[i + 3]];
        buf[o++] = (unsigned char)(v >> 16);
        buf[o++] = (unsigned char)(v >> 8);
        buf[o++] = (unsigned char)v;
    }
    if (rem) {
        apr_uint32_t a = dec_tab[in[i]], b = dec_tab[in[i + 1]], c = rem == 3 ? dec_tab[in[i + 2]] : 0;
        bad |= a | b | c;
        v = (a << 18) | (b << 12) | (c << 6);
        buf[o++] = (unsigned char)(v >> 16);
        if (rem == 3)
            buf[o++] = (unsigned char)(v >> 8);
        /* Leftover bits must be zero, otherwise two encodings decode alike. */
        if ((rem == 2 && (b & 0x0f)) || (rem == 3 && (c & 0x03)))
            return APR_EINVAL;
    }
    if (bad & 0x80)
        return APR_EINVAL;
    buf[o] = '\0';
    *out = buf;
    *outlen = o;
    return APR_SUCCESS;
}

int entra_b64url_jws_shape(const char *s, apr_size_t len)
{
    const unsigned char *in = (const unsigned char *)s;
    apr_size_t i;
    unsigned bad = 0, dots = 0;
    for (i = 0; i < len; i++) {
        unsigned d = in[i] == '.';
        dots += d;
        bad |= d ? 0 : dec_tab[in[i]];
    }
    return !(bad & 0x80) && dots == 2;
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
