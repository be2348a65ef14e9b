/* entra_vtab: the lock-free table of signature verdicts (layout, hits and misses, expiry,
 * replacement, writers that never finish, sharing across fork, and consistency under
 * concurrent writers and readers). */
#include "unit.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "entra_vtab.h"

#define NOW 1700000000

static void hash_of(unsigned n, unsigned char *h)
{
    unsigned i;
    /* Deterministic, spread over all 32 bytes (the bucket uses bytes 8..15). */
    apr_uint64_t x = 0x9e3779b97f4a7c15ULL * (n + 1);
    for (i = 0; i < 32; i++) {
        x ^= x >> 29;
        x *= 0xbf58476d1ce4e5b9ULL;
        h[i] = (unsigned char)(x >> 56);
    }
}

static entra_vtab *mk(unsigned entries, void **mem_out, apr_size_t *bytes_out)
{
    apr_size_t bytes = entra_vtab_bytes(entries);
    void *mem = apr_pcalloc(up, bytes);
    entra_vtab *t = entra_vtab_attach(up, mem, bytes, 42);
    if (!t) {
        fprintf(stderr, "test_vtab: no table\n");
        exit(2);
    }
    if (mem_out)
        *mem_out = mem;
    if (bytes_out)
        *bytes_out = bytes;
    return t;
}

static entra_vtab_entry valid(apr_int64_t until, int alg)
{
    entra_vtab_entry e;
    memset(&e, 0, sizeof(e));
    e.kind = ENTRA_VT_VALID;
    e.until = until;
    e.alg = alg;
    return e;
}

static void test_sizes(void)
{
    CHECK_INT_EQ(ENTRA_VTAB_SLOT_SIZE, 96);
    CHECK_INT_EQ(entra_vtab_bytes(0), 4 * 96);
    CHECK_INT_EQ(entra_vtab_bytes(4), 4 * 96);
    CHECK_INT_EQ(entra_vtab_bytes(5), 8 * 96);
    CHECK_INT_EQ(entra_vtab_bytes(8192), 8192 * 96);
    CHECK(entra_vtab_attach(up, NULL, 4096, 1) == NULL);
    CHECK(entra_vtab_attach(up, apr_pcalloc(up, 96), 96, 1) == NULL);
}

static void test_hit_and_miss(void)
{
    entra_vtab *t = mk(64, NULL, NULL);
    unsigned char h[32], other[32];
    entra_vtab_entry e = valid(NOW + 100, 3), got;

    hash_of(1, h);
    hash_of(2, other);
    CHECK(!entra_vtab_get(t, h, 7, NOW, &got));
    entra_vtab_put(t, h, 7, &e, NOW);
    memset(&got, 0xff, sizeof(got));
    CHECK(entra_vtab_get(t, h, 7, NOW, &got));
    CHECK_INT_EQ(got.kind, ENTRA_VT_VALID);
    CHECK_INT_EQ(got.alg, 3);
    CHECK_INT_EQ(got.until, NOW + 100);
    CHECK_INT_EQ(got.app_claim, 0);
    CHECK_INT_EQ(got.has_oid, 0);
    /* Another source, another token, or a hash differing in its last byte: misses. */
    CHECK(!entra_vtab_get(t, h, 8, NOW, &got));
    CHECK(!entra_vtab_get(t, other, 7, NOW, &got));
    h[31] ^= 1;
    CHECK(!entra_vtab_get(t, h, 7, NOW, &got));
    h[31] ^= 1;
    /* Expiry is exclusive. */
    CHECK(entra_vtab_get(t, h, 7, NOW + 99, &got));
    CHECK(!entra_vtab_get(t, h, 7, NOW + 100, &got));
    /* A NULL table is always a miss and ignores stores. */
    CHECK(!entra_vtab_get(NULL, h, 7, NOW, &got));
    entra_vtab_put(NULL, h, 7, &e, NOW);
    /* Kinds other than valid and invalid are not stored. */
    e.kind = ENTRA_VT_NONE;
    entra_vtab_put(t, other, 7, &e, NOW);
    CHECK(!entra_vtab_get(t, other, 7, NOW, &got));
}

static void test_negative_with_who(void)
{
    entra_vtab *t = mk(64, NULL, NULL);
    unsigned char h[32];
    entra_vtab_entry e, got;
    char g[37];

    hash_of(3, h);
    memset(&e, 0, sizeof(e));
    e.kind = ENTRA_VT_INVALID;
    e.until = NOW + 600;
    e.reason = entra_vtab_reason_code("invalid signature");
    CHECK_INT_EQ(e.reason, 1);
    e.app_claim = 2;
    CHECK(entra_guid_parse("1B2C3D4E-0000-4000-8000-00000000abcd", e.app));
    e.has_oid = entra_guid_parse("99999999-aaaa-bbbb-cccc-dddddddddddd", e.oid);
    CHECK(e.has_oid);
    entra_vtab_put(t, h, 1, &e, NOW);
    CHECK(entra_vtab_get(t, h, 1, NOW, &got));
    CHECK_INT_EQ(got.kind, ENTRA_VT_INVALID);
    CHECK_STR_EQ(entra_vtab_reason(got.reason), "invalid signature");
    CHECK_INT_EQ(got.app_claim, 2);
    entra_guid_format(got.app, g);
    CHECK_STR_EQ(g, "1b2c3d4e-0000-4000-8000-00000000abcd");
    entra_guid_format(got.oid, g);
    CHECK_STR_EQ(g, "99999999-aaaa-bbbb-cccc-dddddddddddd");
}

static void test_reasons_and_guids(void)
{
    unsigned char g[16];
    CHECK_INT_EQ(entra_vtab_reason_code("token algorithm does not match the signing key"), 2);
    CHECK_INT_EQ(entra_vtab_reason_code("token expired"), 0);
    CHECK_INT_EQ(entra_vtab_reason_code(NULL), 0);
    CHECK_STR_EQ(entra_vtab_reason(2), "token algorithm does not match the signing key");
    CHECK_STR_EQ(entra_vtab_reason(77), "invalid signature");
    CHECK(!entra_guid_parse(NULL, g));
    CHECK(!entra_guid_parse("", g));
    CHECK(!entra_guid_parse("1b2c3d4e00004000800000000000abcd", g));
    CHECK(!entra_guid_parse("1b2c3d4e-0000-4000-8000-00000000abcg", g));
    CHECK(!entra_guid_parse("1b2c3d4e-0000-4000-8000-00000000abcd ", g));
    CHECK(!entra_guid_parse("1b2c3d4e+0000-4000-8000-00000000abcd", g));
    CHECK(entra_vtab_tag("a") != entra_vtab_tag("b"));
    CHECK(entra_vtab_tag("source-1") == entra_vtab_tag("source-1"));
}

/* Tokens landing in one bucket: the same key is replaced in place; a full bucket gives up
 * the entry that expires first (or an expired one). */
static void test_replacement(void)
{
    entra_vtab *t = mk(4, NULL, NULL); /* one bucket */
    unsigned char h[6][32];
    entra_vtab_entry e, got;
    int i;

    for (i = 0; i < 6; i++)
        hash_of(100 + (unsigned)i, h[i]);
    for (i = 0; i < 4; i++) {
        e = valid(NOW + 100 + i, 1);
        entra_vtab_put(t, h[i], 1, &e, NOW);
    }
    for (i = 0; i < 4; i++)
        CHECK_MSG(entra_vtab_get(t, h[i], 1, NOW, &got), "entry %d", i);
    /* Re-storing h[2] keeps the other three. */
    e = valid(NOW + 500, 2);
    entra_vtab_put(t, h[2], 1, &e, NOW);
    CHECK(entra_vtab_get(t, h[2], 1, NOW, &got) && got.until == NOW + 500 && got.alg == 2);
    for (i = 0; i < 4; i++)
        CHECK_MSG(entra_vtab_get(t, h[i], 1, NOW, &got), "entry %d after the update", i);
    /* A fifth token evicts h[0], the earliest to expire. */
    e = valid(NOW + 900, 1);
    entra_vtab_put(t, h[4], 1, &e, NOW);
    CHECK(!entra_vtab_get(t, h[0], 1, NOW, &got));
    CHECK(entra_vtab_get(t, h[4], 1, NOW, &got));
    CHECK(entra_vtab_get(t, h[1], 1, NOW, &got));
    /* Later, with h[1] expired, a sixth takes its slot and leaves the live ones alone. */
    e = valid(NOW + 2000, 1);
    entra_vtab_put(t, h[5], 1, &e, NOW + 102);
    CHECK(entra_vtab_get(t, h[5], 1, NOW + 102, &got));
    CHECK(entra_vtab_get(t, h[2], 1, NOW + 102, &got));
    CHECK(entra_vtab_get(t, h[3], 1, NOW + 102, &got));
    CHECK(entra_vtab_get(t, h[4], 1, NOW + 102, &got));
}

/* A writer that died mid-store leaves an odd sequence: that slot reads as a miss and is
 * skipped by stores; nothing waits on it. */
static void test_abandoned_slot(void)
{
    void *mem;
    entra_vtab *t = mk(4, &mem, NULL);
    apr_uint64_t *words = mem;
    unsigned char h[32], h2[32];
    entra_vtab_entry e = valid(NOW + 100, 1), got;
    int i, found = -1;

    hash_of(7, h);
    hash_of(8, h2);
    entra_vtab_put(t, h, 1, &e, NOW);
    for (i = 0; i < 4; i++)
        if (words[i * 12 + 1] != 0)
            found = i;
    CHECK(found >= 0);
    if (found < 0)
        return;
    words[found * 12] += 1; /* the dead writer's claim */
    CHECK(!entra_vtab_get(t, h, 1, NOW, &got));
    entra_vtab_put(t, h, 1, &e, NOW); /* lands in another slot of the bucket */
    CHECK(entra_vtab_get(t, h, 1, NOW, &got));
    /* With every slot abandoned, stores are dropped and reads miss, at once. */
    for (i = 0; i < 4; i++)
        if (!(words[i * 12] & 1))
            words[i * 12] += 1;
    entra_vtab_put(t, h2, 1, &e, NOW);
    CHECK(!entra_vtab_get(t, h2, 1, NOW, &got));
    CHECK(!entra_vtab_get(t, h, 1, NOW, &got));
}

/* What one process stores in shared memory another sees (httpd's children share the
 * table this way, inheriting the mapping from the parent). */
static void test_shared_across_fork(void)
{
    apr_size_t bytes = entra_vtab_bytes(256);
    void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    entra_vtab *t;
    unsigned char h[32], h2[32];
    entra_vtab_entry e = valid(NOW + 100, 4), got;
    pid_t pid;
    int status = -1;

    CHECK(mem != MAP_FAILED);
    if (mem == MAP_FAILED)
        return;
    t = entra_vtab_attach(up, mem, bytes, 99);
    hash_of(11, h);
    hash_of(12, h2);
    entra_vtab_put(t, h, 5, &e, NOW);
    pid = fork();
    if (pid == 0) {
        entra_vtab_entry mine = valid(NOW + 300, 2), seen;
        int ok = entra_vtab_get(t, h, 5, NOW, &seen) && seen.alg == 4;
        entra_vtab_put(t, h2, 5, &mine, NOW);
        _exit(ok ? 0 : 3);
    }
    CHECK(pid > 0);
    if (pid > 0)
        CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(entra_vtab_get(t, h2, 5, NOW, &got) && got.alg == 2 && got.until == NOW + 300);
    munmap(mem, bytes);
}

/* Writers store entries whose fields all derive from the token number; readers check every
 * hit is whole. A torn read would pair one token's hash with another's fields. */
#define KEYS 64
#define ROUNDS 200000
static entra_vtab *shared_t;
static volatile int torn, hits;

static entra_vtab_entry derived(unsigned n)
{
    entra_vtab_entry e;
    memset(&e, 0, sizeof(e));
    e.kind = (n & 1) ? ENTRA_VT_INVALID : ENTRA_VT_VALID;
    e.alg = (int)(n % 9) + 1;
    e.reason = (n & 1) ? 1 : 0;
    e.until = NOW + 1000 + n;
    e.app_claim = 1;
    memset(e.app, (int)n, 16);
    e.has_oid = 1;
    memset(e.oid, (int)(n * 7), 16);
    return e;
}

static void *writer(void *arg)
{
    unsigned seed = (unsigned)(apr_uintptr_t)arg, i, n;
    unsigned char h[32];
    for (i = 0; i < ROUNDS; i++) {
        seed = seed * 1103515245u + 12345u;
        n = (seed >> 8) % KEYS;
        hash_of(n, h);
        entra_vtab_entry e = derived(n);
        /* Vary the expiry a little so slots keep being rewritten. */
        e.until += (apr_int64_t)(i & 3);
        entra_vtab_put(shared_t, h, 1, &e, NOW);
    }
    return NULL;
}

static void *reader(void *arg)
{
    unsigned seed = (unsigned)(apr_uintptr_t)arg, i, n;
    unsigned char h[32];
    entra_vtab_entry got, want;
    for (i = 0; i < ROUNDS; i++) {
        seed = seed * 1103515245u + 12345u;
        n = (seed >> 8) % KEYS;
        hash_of(n, h);
        if (!entra_vtab_get(shared_t, h, 1, NOW, &got))
            continue;
        __atomic_add_fetch(&hits, 1, __ATOMIC_RELAXED);
        want = derived(n);
        if (got.kind != want.kind || got.alg != want.alg || got.reason != want.reason ||
            got.until < want.until || got.until > want.until + 3 ||
            memcmp(got.app, want.app, 16) || memcmp(got.oid, want.oid, 16))
            __atomic_add_fetch(&torn, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void test_concurrent_consistency(void)
{
    pthread_t th[4];
    int i;

    shared_t = mk(32, NULL, NULL); /* 8 buckets for 64 keys: constant eviction */
    torn = hits = 0;
    for (i = 0; i < 4; i++)
        CHECK(pthread_create(&th[i], NULL, i < 2 ? writer : reader,
                             (void *)(apr_uintptr_t)(i * 7919 + 1)) == 0);
    for (i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    CHECK_MSG(torn == 0, "%d torn reads of %d hits", torn, hits);
    CHECK_MSG(hits > 0, "readers never hit (%d)", hits);
}

int main(void)
{
    unit_begin("test_vtab");
    RUN(test_sizes);
    RUN(test_hit_and_miss);
    RUN(test_negative_with_who);
    RUN(test_reasons_and_guids);
    RUN(test_replacement);
    RUN(test_abandoned_slot);
    RUN(test_shared_across_fork);
    RUN(test_concurrent_consistency);
    return unit_end();
}
