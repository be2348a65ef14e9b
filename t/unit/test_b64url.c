/* entra_b64url_decode / entra_b64url_encode: strict base64url (RFC 4648 section 5). */
#include "unit.h"

#include "entra_b64url.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int in_alphabet(int c)
{
    return c != 0 && strchr(alphabet, c) != NULL;
}

/* Decodes `s` (strlen) and reports success. */
static int dec_ok(const char *s)
{
    unsigned char *out;
    apr_size_t n;
    return entra_b64url_decode(up, s, strlen(s), &out, &n) == APR_SUCCESS;
}

static void test_rfc4648_vectors(void)
{
    static const struct {
        const char *plain, *enc;
    } v[] = {
        {"", ""},           {"f", "Zg"},          {"fo", "Zm8"},          {"foo", "Zm9v"},
        {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
    };
    size_t i;

    for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        unsigned char *out = NULL;
        apr_size_t n = 99;
        CHECK_STR_EQ(entra_b64url_encode(up, (const unsigned char *)v[i].plain, strlen(v[i].plain)),
                     v[i].enc);
        CHECK_INT_EQ(entra_b64url_decode(up, v[i].enc, strlen(v[i].enc), &out, &n), APR_SUCCESS);
        CHECK_INT_EQ(n, strlen(v[i].plain));
        CHECK(out != NULL && memcmp(out, v[i].plain, n) == 0);
        CHECK(out != NULL && out[n] == '\0');
    }
}

/* The two characters that differ from standard base64. */
static void test_url_alphabet(void)
{
    static const unsigned char a[] = {0xfb, 0xff}, b[] = {0xfb, 0xef, 0xbe},
                               c[] = {0xff, 0xff, 0xff}, z[] = {0, 0, 0};
    unsigned char *out;
    apr_size_t n;

    CHECK_STR_EQ(entra_b64url_encode(up, a, sizeof(a)), "-_8");
    CHECK_STR_EQ(entra_b64url_encode(up, b, sizeof(b)), "----");
    CHECK_STR_EQ(entra_b64url_encode(up, c, sizeof(c)), "____");
    CHECK_STR_EQ(entra_b64url_encode(up, z, sizeof(z)), "AAAA");
    CHECK_INT_EQ(entra_b64url_decode(up, "-_8", 3, &out, &n), APR_SUCCESS);
    CHECK(n == 2 && out[0] == 0xfb && out[1] == 0xff);
    CHECK_INT_EQ(entra_b64url_decode(up, "AAAA", 4, &out, &n), APR_SUCCESS);
    CHECK(n == 3 && memcmp(out, z, 3) == 0);
}

/* Deterministic PRNG (xorshift32); the tests must not depend on the run. */
static apr_uint32_t rng = 0x9e3779b9u;
static apr_uint32_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void test_round_trips(void)
{
    unsigned char data[301];
    apr_size_t len, i;
    int bad_len = 0, bad_chars = 0, bad_rt = 0;

    for (len = 0; len <= 300; len++) {
        char *enc;
        unsigned char *out;
        apr_size_t n;
        for (i = 0; i < len; i++)
            data[i] = (unsigned char)next_rand();
        enc = entra_b64url_encode(up, data, len);
        if (strlen(enc) != (len * 4 + 2) / 3)
            bad_len++;
        for (i = 0; enc[i]; i++)
            if (!in_alphabet(enc[i]))
                bad_chars++;
        if (entra_b64url_decode(up, enc, strlen(enc), &out, &n) != APR_SUCCESS || n != len ||
            memcmp(out, data, len) != 0 || out[n] != '\0')
            bad_rt++;
    }
    CHECK_INT_EQ(bad_len, 0);
    CHECK_INT_EQ(bad_chars, 0);
    CHECK_INT_EQ(bad_rt, 0);

    /* Every single byte value and every pair of extreme bytes. */
    bad_rt = 0;
    for (i = 0; i < 256; i++) {
        unsigned char b[3] = {(unsigned char)i, (unsigned char)(255 - i), (unsigned char)i}, *out;
        apr_size_t n, l;
        for (l = 1; l <= 3; l++) {
            char *enc = entra_b64url_encode(up, b, l);
            if (entra_b64url_decode(up, enc, strlen(enc), &out, &n) != APR_SUCCESS || n != l ||
                memcmp(out, b, l) != 0)
                bad_rt++;
        }
    }
    CHECK_INT_EQ(bad_rt, 0);
}

static void test_decodes_exactly_len(void)
{
    unsigned char *out;
    apr_size_t n;

    /* Characters after `len` are not looked at, even invalid ones. */
    CHECK_INT_EQ(entra_b64url_decode(up, "Zm9v=+/ ", 4, &out, &n), APR_SUCCESS);
    CHECK(n == 3 && memcmp(out, "foo", 3) == 0);
    CHECK_INT_EQ(entra_b64url_decode(up, "Zm9vYgXX", 6, &out, &n), APR_SUCCESS);
    CHECK(n == 4 && memcmp(out, "foob", 4) == 0);
    CHECK_INT_EQ(entra_b64url_decode(up, "Zm9v", 0, &out, &n), APR_SUCCESS);
    CHECK_INT_EQ(n, 0);
}

static void test_rejects_padding(void)
{
    CHECK(!dec_ok("Zg=="));
    CHECK(!dec_ok("Zg="));
    CHECK(!dec_ok("Zm8="));
    CHECK(!dec_ok("Zm9vYg=="));
    CHECK(!dec_ok("Zm9vYmE="));
    CHECK(!dec_ok("===="));
    CHECK(!dec_ok("="));
    CHECK(!dec_ok("Zm9v===="));
    CHECK(!dec_ok("Zm=v"));
}

static void test_rejects_standard_alphabet_and_whitespace(void)
{
    CHECK(!dec_ok("+_8"));
    CHECK(!dec_ok("-/8"));
    CHECK(!dec_ok("++++"));
    CHECK(!dec_ok("////"));
    CHECK(!dec_ok("Zm9v "));
    CHECK(!dec_ok(" Zm9v"));
    CHECK(!dec_ok("Zm 9v"));
    CHECK(!dec_ok("Zm9v\n"));
    CHECK(!dec_ok("Zm9v\r\n"));
    CHECK(!dec_ok("\tZm9v"));
    CHECK(!dec_ok("Zm9.v"));
}

/* Exactly the 64 alphabet characters decode, at any position of a quantum. */
static void test_every_byte_value(void)
{
    int c, pos, accepted[4] = {0, 0, 0, 0}, wrong = 0;

    for (pos = 0; pos < 4; pos++) {
        for (c = 0; c < 256; c++) {
            char s[4] = {'Q', 'U', 'F', 'B'}; /* "QUFB" = "AAA" */
            unsigned char *out;
            apr_size_t n;
            int ok;
            s[pos] = (char)c;
            ok = entra_b64url_decode(up, s, 4, &out, &n) == APR_SUCCESS;
            if (ok)
                accepted[pos]++;
            if (ok != in_alphabet(c))
                wrong++;
        }
    }
    CHECK_INT_EQ(wrong, 0);
    CHECK_INT_EQ(accepted[0], 64);
    CHECK_INT_EQ(accepted[3], 64);
}

static void test_rejects_length_mod4_1(void)
{
    unsigned char *out = (unsigned char *)"x";
    apr_size_t n = 7, len;
    int bad = 0;

    CHECK(!dec_ok("Z"));
    CHECK(!dec_ok("Zm9vY"));
    CHECK(!dec_ok("Zm9vYmFyA"));
    CHECK_INT_EQ(entra_b64url_decode(up, "A", 1, &out, &n), APR_EINVAL);
    /* Every length 4k+1 of valid characters is refused. */
    for (len = 1; len <= 41; len += 4) {
        char buf[48];
        memset(buf, 'A', len);
        if (entra_b64url_decode(up, buf, len, &out, &n) == APR_SUCCESS)
            bad++;
    }
    CHECK_INT_EQ(bad, 0);
}

/* Two and three character tails carry 4 and 2 unused bits, which must be zero. */
static void test_rejects_noncanonical_trailing_bits(void)
{
    int c, ok2 = 0, ok3 = 0;
    unsigned char *out;
    apr_size_t n;

    CHECK(dec_ok("QQ"));  /* "A" */
    CHECK(!dec_ok("QR")); /* "A" with a stray low bit */
    CHECK(!dec_ok("QX"));
    CHECK(!dec_ok("Q_"));
    CHECK(dec_ok("Zm8"));  /* "fo" */
    CHECK(!dec_ok("Zm9")); /* "fo" with a stray low bit */
    CHECK(!dec_ok("Zm-"));
    CHECK(dec_ok("Zm9vYmE"));
    CHECK(!dec_ok("Zm9vYmF"));
    CHECK(!dec_ok("Zm9vYh"));

    for (c = 0; c < 64; c++) {
        char s2[2] = {'Q', alphabet[c]}, s3[3] = {'Z', 'm', alphabet[c]};
        if (entra_b64url_decode(up, s2, 2, &out, &n) == APR_SUCCESS)
            ok2++;
        if (entra_b64url_decode(up, s3, 3, &out, &n) == APR_SUCCESS)
            ok3++;
    }
    CHECK_INT_EQ(ok2, 4);  /* A, Q, g, w */
    CHECK_INT_EQ(ok3, 16); /* the characters whose low 2 bits are zero */
}

static void test_rejects_nul_inside(void)
{
    unsigned char *out;
    apr_size_t n;

    CHECK_INT_EQ(entra_b64url_decode(up, "Zm\0v", 4, &out, &n), APR_EINVAL);
    CHECK_INT_EQ(entra_b64url_decode(up, "Zm9v\0\0\0\0", 8, &out, &n), APR_EINVAL);
    CHECK_INT_EQ(entra_b64url_decode(up, "\0Zm9", 4, &out, &n), APR_EINVAL);
    CHECK_INT_EQ(entra_b64url_decode(up, "Zm9vYg\0", 7, &out, &n), APR_EINVAL);
}

static void test_empty(void)
{
    unsigned char *out = NULL;
    apr_size_t n = 5;

    CHECK_STR_EQ(entra_b64url_encode(up, (const unsigned char *)"", 0), "");
    CHECK_INT_EQ(entra_b64url_decode(up, "", 0, &out, &n), APR_SUCCESS);
    CHECK_INT_EQ(n, 0);
    CHECK(out != NULL && out[0] == '\0');
}

/* The decoded bytes may hold NULs; the length, not strlen, counts. */
static void test_binary_output(void)
{
    static const unsigned char bin[] = {0, 'a', 0, 0xff, 0};
    char *enc = entra_b64url_encode(up, bin, sizeof(bin));
    unsigned char *out;
    apr_size_t n;

    CHECK_STR_EQ(enc, "AGEA_wA");
    CHECK_INT_EQ(entra_b64url_decode(up, enc, strlen(enc), &out, &n), APR_SUCCESS);
    CHECK_INT_EQ(n, sizeof(bin));
    CHECK(memcmp(out, bin, sizeof(bin)) == 0);
}

int main(void)
{
    unit_begin("test_b64url");
    RUN(test_rfc4648_vectors);
    RUN(test_url_alphabet);
    RUN(test_round_trips);
    RUN(test_decodes_exactly_len);
    RUN(test_rejects_padding);
    RUN(test_rejects_standard_alphabet_and_whitespace);
    RUN(test_every_byte_value);
    RUN(test_rejects_length_mod4_1);
    RUN(test_rejects_noncanonical_trailing_bits);
    RUN(test_rejects_nul_inside);
    RUN(test_empty);
    RUN(test_binary_output);
    return unit_end();
}
