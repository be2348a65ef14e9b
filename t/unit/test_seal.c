/* entra_seal: round trip, every byte of a sealed record guarded, names bound, wrong keys
 * and short inputs refused, opaque names, and the key file's checks. */
#include "unit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "entra_seal.h"

#define NOW ((apr_int64_t)1800000000)
#define FAR (NOW + 3600)

static const unsigned char SECRET_A[40] = "0123456789abcdef0123456789abcdef-A-key";
static const unsigned char SECRET_B[40] = "0123456789abcdef0123456789abcdef-B-key";

static entra_seal *mk(const unsigned char *secret, apr_size_t len)
{
    entra_seal *s = NULL;
    const char *why = NULL;
    CHECK_INT_EQ(entra_seal_create(up, secret, len, &s, &why), APR_SUCCESS);
    if (!s) {
        fprintf(stderr, "test_seal: no seal (%s)\n", why ? why : "?");
        exit(2);
    }
    return s;
}

static const char *open_str(entra_seal *s, const char *name, const unsigned char *in,
                            apr_size_t len)
{
    char *out = (char *)"unset";
    apr_size_t n = 99;
    if (entra_seal_open(s, up, name, NOW, in, len, &out, &n) != APR_SUCCESS) {
        CHECK(out == NULL && n == 0);
        return NULL;
    }
    return strlen(out) == n ? out : "(length mismatch)";
}

static void test_round_trip(void)
{
    entra_seal *s = mk(SECRET_A, sizeof(SECRET_A));
    const char *plain = "{\"keys\":[{\"kid\":\"abc\"}],\"iss2\":\"https://issuer\"}";
    unsigned char *sealed, *again;
    apr_size_t n, n2;

    CHECK_INT_EQ(entra_seal_seal(s, up, "src|rec", FAR, plain, strlen(plain), &sealed, &n), APR_SUCCESS);
    CHECK_INT_EQ(n, strlen(plain) + ENTRA_SEAL_OVERHEAD);
    CHECK_STR_EQ(open_str(s, "src|rec", sealed, n), plain);
    /* No plaintext in the sealed form. */
    CHECK(memmem(sealed, n, "kid", 3) == NULL && memmem(sealed, n, "issuer", 6) == NULL);
    /* A fresh nonce each time: the same record never seals the same way twice. */
    CHECK_INT_EQ(entra_seal_seal(s, up, "src|rec", FAR, plain, strlen(plain), &again, &n2), APR_SUCCESS);
    CHECK(n2 == n && memcmp(again, sealed, n) != 0);
    /* Empty records too. */
    CHECK_INT_EQ(entra_seal_seal(s, up, "e", FAR, "", 0, &sealed, &n), APR_SUCCESS);
    CHECK_STR_EQ(open_str(s, "e", sealed, n), "");
    /* A key derived from the same secret opens what another instance sealed (two machines). */
    CHECK_STR_EQ(open_str(mk(SECRET_A, sizeof(SECRET_A)), "e", sealed, n), "");
}

static void test_every_byte_is_guarded(void)
{
    entra_seal *s = mk(SECRET_A, sizeof(SECRET_A));
    const char *plain = "a record of some length, with a token in it";
    unsigned char *sealed, *copy;
    apr_size_t n, i;
    int bit, opened = 0;

    CHECK_INT_EQ(entra_seal_seal(s, up, "k", FAR, plain, strlen(plain), &sealed, &n), APR_SUCCESS);
    copy = apr_pmemdup(up, sealed, n);
    /* Version byte, nonce, ciphertext and tag: any flipped bit is refused. */
    for (i = 0; i < n; i++)
        for (bit = 0; bit < 8; bit++) {
            copy[i] ^= (unsigned char)(1u << bit);
            opened += open_str(s, "k", copy, n) != NULL;
            copy[i] ^= (unsigned char)(1u << bit);
        }
    CHECK_INT_EQ(opened, 0);
    CHECK_STR_EQ(open_str(s, "k", copy, n), plain);
    /* Truncated at every length, and extended by one byte. */
    for (i = 0; i < n; i++)
        opened += open_str(s, "k", copy, i) != NULL;
    CHECK_INT_EQ(opened, 0);
    copy = apr_palloc(up, n + 1);
    memcpy(copy, sealed, n);
    copy[n] = 0;
    CHECK(open_str(s, "k", copy, n + 1) == NULL);
}

static void test_names_are_bound(void)
{
    entra_seal *s = mk(SECRET_A, sizeof(SECRET_A));
    unsigned char *a, *b;
    apr_size_t na, nb;

    CHECK_INT_EQ(entra_seal_seal(s, up, "src1|rec", FAR, "one", 3, &a, &na), APR_SUCCESS);
    CHECK_INT_EQ(entra_seal_seal(s, up, "src2|rec", FAR, "two", 3, &b, &nb), APR_SUCCESS);
    /* Swapped records. */
    CHECK(open_str(s, "src1|rec", b, nb) == NULL);
    CHECK(open_str(s, "src2|rec", a, na) == NULL);
    CHECK(open_str(s, "src1|re", a, na) == NULL);
    CHECK(open_str(s, "src1|rec ", a, na) == NULL);
    CHECK(open_str(s, "", a, na) == NULL);
    CHECK_STR_EQ(open_str(s, "src1|rec", a, na), "one");
}

static void test_wrong_key(void)
{
    entra_seal *a = mk(SECRET_A, sizeof(SECRET_A)), *b = mk(SECRET_B, sizeof(SECRET_B));
    unsigned char *sealed;
    apr_size_t n;

    CHECK_INT_EQ(entra_seal_seal(a, up, "k", FAR, "secret", 6, &sealed, &n), APR_SUCCESS);
    CHECK(open_str(b, "k", sealed, n) == NULL);
    /* One more byte of secret is another key. */
    CHECK(open_str(mk(SECRET_A, sizeof(SECRET_A) - 1), "k", sealed, n) == NULL);
}

static void test_short_and_garbage_inputs(void)
{
    entra_seal *s = mk(SECRET_A, sizeof(SECRET_A));
    unsigned char zeros[64] = {0}, plain_json[] = "{\"keys\":[],\"iss2\":\"x\",\"v\":1}";
    CHECK(open_str(s, "k", zeros, 0) == NULL);
    CHECK(open_str(s, "k", zeros, ENTRA_SEAL_OVERHEAD - 1) == NULL);
    CHECK(open_str(s, "k", zeros, ENTRA_SEAL_OVERHEAD) == NULL);
    zeros[0] = 1;
    CHECK(open_str(s, "k", zeros, sizeof(zeros)) == NULL);
    /* What an unsealed writer (or an older module) would have stored. */
    CHECK(open_str(s, "k", plain_json, sizeof(plain_json) - 1) == NULL);
}

static void test_opaque_names(void)
{
    entra_seal *a = mk(SECRET_A, sizeof(SECRET_A)), *b = mk(SECRET_B, sizeof(SECRET_B));
    unsigned char n1[ENTRA_SEAL_NAME_LEN], n2[ENTRA_SEAL_NAME_LEN], n3[ENTRA_SEAL_NAME_LEN];

    entra_seal_name(a, "src|rec", n1);
    entra_seal_name(a, "src|rec", n2);
    CHECK(memcmp(n1, n2, sizeof(n1)) == 0);
    entra_seal_name(a, "src|ref", n2);
    CHECK(memcmp(n1, n2, sizeof(n1)) != 0);
    entra_seal_name(b, "src|rec", n3);
    CHECK(memcmp(n1, n3, sizeof(n1)) != 0);
    CHECK(memmem(n1, sizeof(n1), "rec", 3) == NULL);
}

static void test_expiry_is_sealed(void)
{
    entra_seal *s = mk(SECRET_A, sizeof(SECRET_A));
    unsigned char *sealed;
    char *out;
    apr_size_t n, on;
    int i;

    CHECK_INT_EQ(entra_seal_seal(s, up, "k", NOW + 10, "v", 1, &sealed, &n), APR_SUCCESS);
    CHECK_INT_EQ(entra_seal_open(s, up, "k", NOW + 9, sealed, n, &out, &on), APR_SUCCESS);
    /* Genuine but expired: whoever holds the cache cannot keep a record alive. */
    CHECK_INT_EQ(entra_seal_open(s, up, "k", NOW + 10, sealed, n, &out, &on), APR_TIMEUP);
    CHECK(out == NULL && on == 0);
    /* A later expiry written into the header does not open at all. */
    for (i = 1; i <= 8; i++) {
        sealed[i] ^= 0x40;
        CHECK_INT_EQ(entra_seal_open(s, up, "k", NOW, sealed, n, &out, &on), APR_EGENERAL);
        sealed[i] ^= 0x40;
    }
}

static void test_short_secret_refused(void)
{
    entra_seal *s = (entra_seal *)1;
    const char *why = NULL;
    CHECK(entra_seal_create(up, SECRET_A, ENTRA_SEAL_MIN_SECRET - 1, &s, &why) != APR_SUCCESS);
    CHECK(s == NULL && unit_contains(why, "at least 32"));
}

static const char *write_key(const char *dir, const char *name, apr_size_t len, mode_t mode)
{
    const char *path = apr_pstrcat(up, dir, "/", name, NULL);
    unsigned char buf[5000];
    int fd;
    memset(buf, 0x5a, sizeof(buf));
    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0 && write(fd, buf, len) == (ssize_t)len);
    close(fd);
    chmod(path, mode);
    return path;
}

static apr_status_t load(const char *path, const char **why)
{
    entra_seal *s = NULL;
    apr_status_t rv = entra_seal_load(up, path, &s, why);
    CHECK((rv == APR_SUCCESS) == (s != NULL));
    return rv;
}

static void test_key_file_checks(void)
{
    char dir[] = "/tmp/entra-seal-XXXXXX";
    const char *why = NULL;
    CHECK(mkdtemp(dir) != NULL);

    CHECK_INT_EQ(load(write_key(dir, "ok", 32, 0600), &why), APR_SUCCESS);
    CHECK_INT_EQ(load(write_key(dir, "ok-group", 64, 0640), &why), APR_SUCCESS);
    CHECK_INT_EQ(load(write_key(dir, "ok-ro", 32, 0400), &why), APR_SUCCESS);

    CHECK(load(write_key(dir, "short", 31, 0600), &why) != APR_SUCCESS);
    CHECK(unit_contains(why, "31 bytes") && unit_contains(why, "32"));
    CHECK(load(write_key(dir, "empty", 0, 0600), &why) != APR_SUCCESS);
    CHECK(load(write_key(dir, "huge", 4097, 0600), &why) != APR_SUCCESS);
    CHECK(load(write_key(dir, "world", 32, 0604), &why) != APR_SUCCESS);
    CHECK(unit_contains(why, "readable by others") && unit_contains(why, "0604"));
    CHECK(load(write_key(dir, "world-w", 32, 0602), &why) != APR_SUCCESS);
    CHECK(unit_contains(why, "writable"));
    CHECK(load(write_key(dir, "group-w", 32, 0660), &why) != APR_SUCCESS);
    CHECK(load(dir, &why) != APR_SUCCESS);
    CHECK(unit_contains(why, "not a regular file"));
    CHECK(load(apr_pstrcat(up, dir, "/missing", NULL), &why) != APR_SUCCESS);
    CHECK(unit_contains(why, "cannot open"));

    /* The same file gives the same keys (what two machines sharing a cache rely on). */
    {
        entra_seal *a = NULL, *b = NULL;
        unsigned char *sealed;
        char *out;
        apr_size_t n, on;
        const char *path = write_key(dir, "ok", 32, 0600);
        CHECK_INT_EQ(entra_seal_load(up, path, &a, &why), APR_SUCCESS);
        CHECK_INT_EQ(entra_seal_load(up, path, &b, &why), APR_SUCCESS);
        CHECK_INT_EQ(entra_seal_seal(a, up, "x", FAR, "y", 1, &sealed, &n), APR_SUCCESS);
        CHECK_INT_EQ(entra_seal_open(b, up, "x", NOW, sealed, n, &out, &on), APR_SUCCESS);
    }
    {
        const char *names[] = {"ok", "ok-group", "ok-ro", "short", "empty", "huge", "world",
                               "world-w", "group-w"};
        unsigned i;
        for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
            unlink(apr_pstrcat(up, dir, "/", names[i], NULL));
        rmdir(dir);
    }
}

int main(void)
{
    unit_begin("test_seal");
    RUN(test_round_trip);
    RUN(test_every_byte_is_guarded);
    RUN(test_names_are_bound);
    RUN(test_wrong_key);
    RUN(test_short_and_garbage_inputs);
    RUN(test_opaque_names);
    RUN(test_expiry_is_sealed);
    RUN(test_short_secret_refused);
    RUN(test_key_file_checks);
    return unit_end();
}
