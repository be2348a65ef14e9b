#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <apr_strings.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include "entra_seal.h"

#define VERSION 1
#define NONCE_LEN 12
#define TAG_LEN 16
#define KEY_LEN 32

struct entra_seal {
    unsigned char seal_key[KEY_LEN];
    unsigned char name_key[KEY_LEN];
    EVP_CIPHER *aead; /* fetched once: a fetch per record costs more than the sealing */
};

static apr_status_t seal_cleanup(void *data)
{
    entra_seal *s = data;
    OPENSSL_cleanse(s->seal_key, sizeof(s->seal_key));
    OPENSSL_cleanse(s->name_key, sizeof(s->name_key));
    EVP_CIPHER_free(s->aead);
    s->aead = NULL;
    return APR_SUCCESS;
}

/* HKDF-SHA256: one independent key per purpose, so the name HMAC never shares a key
 * with the cipher. */
static int hkdf(const unsigned char *secret, apr_size_t len, const char *info,
                unsigned char out[KEY_LEN])
{
    static const char salt[] = "mod_entra cache v1";
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[5];
    int ok = 0;

    if (ctx) {
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
        params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, len);
        params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt,
                                                      sizeof(salt) - 1);
        params[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info,
                                                      strlen(info));
        params[4] = OSSL_PARAM_construct_end();
        ok = EVP_KDF_derive(ctx, out, KEY_LEN, params) == 1;
    }
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    return ok;
}

apr_status_t entra_seal_create(apr_pool_t *p, const unsigned char *secret, apr_size_t len,
                               entra_seal **out, const char **why)
{
    entra_seal *s = apr_pcalloc(p, sizeof(*s));

    *out = NULL;
    if (len < ENTRA_SEAL_MIN_SECRET) {
        *why = apr_psprintf(p, "holds %" APR_SIZE_T_FMT " bytes; at least %d random bytes are "
                            "needed (e.g. head -c 32 /dev/urandom)", len, ENTRA_SEAL_MIN_SECRET);
        return APR_EINVAL;
    }
    apr_pool_cleanup_register(p, s, seal_cleanup, apr_pool_cleanup_null);
    if (!hkdf(secret, len, "mod_entra seal", s->seal_key) ||
        !hkdf(secret, len, "mod_entra name", s->name_key) ||
        !(s->aead = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL))) {
        *why = "OpenSSL lacks HKDF or AES-256-GCM";
        return APR_EGENERAL;
    }
    *out = s;
    return APR_SUCCESS;
}

apr_status_t entra_seal_load(apr_pool_t *p, const char *path, entra_seal **out,
                             const char **why)
{
    unsigned char buf[ENTRA_SEAL_MAX_SECRET];
    struct stat st;
    ssize_t n = 0, got;
    apr_status_t rv;
    int fd;

    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        *why = apr_psprintf(p, "cannot open %s: %s", path, strerror(errno));
        return APR_FROM_OS_ERROR(errno);
    }
    /* Checked on the opened file, so a swap between check and read changes nothing. */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        *why = apr_psprintf(p, "%s is not a regular file", path);
        return APR_EINVAL;
    }
    if (st.st_mode & (S_IROTH | S_IWOTH | S_IWGRP)) {
        close(fd);
        *why = apr_psprintf(p, "%s is %s by others (mode %04o): chmod 0600, or 0640 with "
                            "root's group or httpd's",
                            path, st.st_mode & S_IROTH ? "readable" : "writable",
                            (unsigned)(st.st_mode & 07777));
        return APR_EINVAL;
    }
    if (st.st_size < ENTRA_SEAL_MIN_SECRET || st.st_size > ENTRA_SEAL_MAX_SECRET) {
        close(fd);
        *why = apr_psprintf(p, "%s holds %ld bytes; it must hold %d to %d random bytes (e.g. "
                            "head -c 32 /dev/urandom)",
                            path, (long)st.st_size, ENTRA_SEAL_MIN_SECRET, ENTRA_SEAL_MAX_SECRET);
        return APR_EINVAL;
    }
    while (n < st.st_size && (got = read(fd, buf + n, (size_t)(st.st_size - n))) > 0)
        n += got;
    close(fd);
    if (n != st.st_size) {
        OPENSSL_cleanse(buf, sizeof(buf));
        *why = apr_psprintf(p, "cannot read %s", path);
        return APR_EGENERAL;
    }
    rv = entra_seal_create(p, buf, (apr_size_t)n, out, why);
    OPENSSL_cleanse(buf, sizeof(buf));
    if (rv != APR_SUCCESS && rv != APR_EGENERAL)
        *why = apr_pstrcat(p, path, " ", *why, NULL);
    return rv;
}

void entra_seal_name(const entra_seal *s, const char *name,
                     unsigned char out[ENTRA_SEAL_NAME_LEN])
{
    unsigned int n = ENTRA_SEAL_NAME_LEN;
    if (!HMAC(EVP_sha256(), s->name_key, KEY_LEN, (const unsigned char *)name, strlen(name), out,
              &n))
        memset(out, 0, ENTRA_SEAL_NAME_LEN); /* only on allocation failure: names collide */
}

#define HEAD_LEN (1 + 8) /* version, expiry: in clear, authenticated */

/* Associated data: the header (version, expiry) and the logical name. */
static int aad(EVP_CIPHER_CTX *ctx, int enc, const unsigned char *head, const char *name)
{
    int n;
    if (enc)
        return EVP_EncryptUpdate(ctx, NULL, &n, head, HEAD_LEN) == 1 &&
               EVP_EncryptUpdate(ctx, NULL, &n, (const unsigned char *)name, (int)strlen(name)) == 1;
    return EVP_DecryptUpdate(ctx, NULL, &n, head, HEAD_LEN) == 1 &&
           EVP_DecryptUpdate(ctx, NULL, &n, (const unsigned char *)name, (int)strlen(name)) == 1;
}

apr_status_t entra_seal_seal(const entra_seal *s, apr_pool_t *p, const char *name,
                             apr_int64_t expiry, const void *plain, apr_size_t len,
                             unsigned char **out, apr_size_t *outlen)
{
    unsigned char *buf, *nonce, *ct;
    EVP_CIPHER_CTX *ctx;
    int n = 0, fin = 0, ok, i;

    *out = NULL;
    *outlen = 0;
    if (len > (apr_size_t)1 << 30)
        return APR_EINVAL;
    buf = apr_palloc(p, len + ENTRA_SEAL_OVERHEAD);
    buf[0] = VERSION;
    for (i = 0; i < 8; i++)
        buf[1 + i] = (unsigned char)((apr_uint64_t)expiry >> (56 - 8 * i));
    nonce = buf + HEAD_LEN;
    ct = nonce + NONCE_LEN;
    if (RAND_bytes(nonce, NONCE_LEN) != 1 || !(ctx = EVP_CIPHER_CTX_new()))
        return APR_EGENERAL;
    ok = EVP_EncryptInit_ex2(ctx, s->aead, s->seal_key, nonce, NULL) == 1 && aad(ctx, 1, buf, name) &&
         EVP_EncryptUpdate(ctx, ct, &n, plain, (int)len) == 1 &&
         EVP_EncryptFinal_ex(ctx, ct + n, &fin) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, ct + len) == 1 &&
         (apr_size_t)(n + fin) == len;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok)
        return APR_EGENERAL;
    *out = buf;
    *outlen = len + ENTRA_SEAL_OVERHEAD;
    return APR_SUCCESS;
}

apr_status_t entra_seal_open(const entra_seal *s, apr_pool_t *p, const char *name,
                             apr_int64_t now, const unsigned char *in, apr_size_t len,
                             char **out, apr_size_t *outlen)
{
    const unsigned char *nonce = in + HEAD_LEN, *ct = nonce + NONCE_LEN;
    apr_uint64_t expiry = 0;
    apr_size_t clen;
    unsigned char *buf;
    EVP_CIPHER_CTX *ctx;
    int n = 0, fin = 0, ok, i;

    *out = NULL;
    *outlen = 0;
    if (len < ENTRA_SEAL_OVERHEAD || in[0] != VERSION || len - ENTRA_SEAL_OVERHEAD > (1u << 30))
        return APR_EGENERAL;
    clen = len - ENTRA_SEAL_OVERHEAD;
    buf = apr_palloc(p, clen + 1);
    if (!(ctx = EVP_CIPHER_CTX_new()))
        return APR_EGENERAL;
    ok = EVP_DecryptInit_ex2(ctx, s->aead, s->seal_key, nonce, NULL) == 1 && aad(ctx, 0, in, name) &&
         EVP_DecryptUpdate(ctx, buf, &n, ct, (int)clen) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, (void *)(ct + clen)) == 1 &&
         EVP_DecryptFinal_ex(ctx, buf + n, &fin) == 1 && (apr_size_t)(n + fin) == clen;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        OPENSSL_cleanse(buf, clen);
        return APR_EGENERAL;
    }
    for (i = 0; i < 8; i++)
        expiry = (expiry << 8) | in[1 + i];
    if ((apr_int64_t)expiry <= now) {
        OPENSSL_cleanse(buf, clen);
        return APR_TIMEUP;
    }
    buf[clen] = '\0';
    *out = (char *)buf;
    *outlen = clen;
    return APR_SUCCESS;
}
