#include <string.h>
#include <openssl/crypto.h>

#include "entra_vtab.h"

/* One slot: twelve 64-bit words, every access atomic (relaxed, ordered by the sequence
 * word as in Boehm's "Can seqlocks get along with programming language memory models?"). */
enum {
    W_SEQ = 0, /* even: stable; odd: being written */
    W_META,    /* kind | alg << 8 | reason << 16 | app_claim << 24 | has_oid << 32 */
    W_UNTIL,
    W_HASH,    /* 4 words */
    W_TAG = W_HASH + 4,
    W_APP,     /* 2 words */
    W_OID = W_APP + 2,
    W_COUNT = W_OID + 2
};

typedef struct {
    apr_uint64_t w[W_COUNT];
} slot_t;

struct entra_vtab {
    slot_t *slots;
    apr_uint64_t mask; /* buckets - 1 */
    apr_uint64_t seed;
};

static const char *const reasons[] = {
    NULL,
    ENTRA_WHY_BAD_SIGNATURE,
    ENTRA_WHY_ALG_NOT_KEY,
};

static unsigned buckets_for(unsigned entries)
{
    unsigned b = 1;
    while (b < 1u << 24 && (apr_uint64_t)b * ENTRA_VTAB_WAYS < entries)
        b <<= 1;
    return b;
}

apr_size_t entra_vtab_bytes(unsigned entries)
{
    return (apr_size_t)buckets_for(entries) * ENTRA_VTAB_WAYS * sizeof(slot_t);
}

entra_vtab *entra_vtab_attach(apr_pool_t *p, void *mem, apr_size_t bytes, apr_uint64_t seed)
{
    entra_vtab *t;
    apr_uint64_t b = 1;

    if (!mem || bytes < ENTRA_VTAB_WAYS * sizeof(slot_t))
        return NULL;
    while ((b << 1) * ENTRA_VTAB_WAYS * sizeof(slot_t) <= bytes && b < 1u << 24)
        b <<= 1;
    t = apr_pcalloc(p, sizeof(*t));
    t->slots = mem;
    t->mask = b - 1;
    t->seed = seed;
    return t;
}

static apr_uint64_t mix64(apr_uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static slot_t *bucket_of(const entra_vtab *t, const unsigned char *hash)
{
    apr_uint64_t h;
    memcpy(&h, hash + 8, sizeof(h));
    return &t->slots[(mix64(h ^ t->seed) & t->mask) * ENTRA_VTAB_WAYS];
}

/* A consistent copy of the slot, or 0 when a writer holds it or moved it meanwhile. */
static int read_slot(slot_t *s, slot_t *copy)
{
    apr_uint64_t s1 = __atomic_load_n(&s->w[W_SEQ], __ATOMIC_ACQUIRE), s2;
    int i;

    if (s1 & 1)
        return 0;
    for (i = 1; i < W_COUNT; i++)
        copy->w[i] = __atomic_load_n(&s->w[i], __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    s2 = __atomic_load_n(&s->w[W_SEQ], __ATOMIC_RELAXED);
    return s1 == s2;
}

static int same_key(const slot_t *c, const unsigned char *hash, apr_uint64_t tag)
{
    return (c->w[W_META] & 0xff) != ENTRA_VT_NONE && c->w[W_TAG] == tag &&
           CRYPTO_memcmp(&c->w[W_HASH], hash, 32) == 0;
}

int entra_vtab_get(entra_vtab *t, const unsigned char *hash, apr_uint64_t tag, apr_int64_t now,
                   entra_vtab_entry *out)
{
    slot_t *b, c;
    apr_uint64_t meta;
    int i;

    if (!t)
        return 0;
    b = bucket_of(t, hash);
    for (i = 0; i < ENTRA_VTAB_WAYS; i++) {
        if (!read_slot(&b[i], &c) || !same_key(&c, hash, tag) ||
            (apr_int64_t)c.w[W_UNTIL] <= now)
            continue;
        meta = c.w[W_META];
        memset(out, 0, sizeof(*out));
        out->kind = (entra_vt_kind)(meta & 0xff);
        out->alg = (int)((meta >> 8) & 0xff);
        out->reason = (int)((meta >> 16) & 0xff);
        out->app_claim = (int)((meta >> 24) & 0xff);
        out->has_oid = (int)((meta >> 32) & 1);
        out->until = (apr_int64_t)c.w[W_UNTIL];
        memcpy(out->app, &c.w[W_APP], 16);
        memcpy(out->oid, &c.w[W_OID], 16);
        if (out->kind != ENTRA_VT_VALID && out->kind != ENTRA_VT_INVALID)
            return 0;
        return 1;
    }
    return 0;
}

void entra_vtab_put(entra_vtab *t, const unsigned char *hash, apr_uint64_t tag,
                    const entra_vtab_entry *e, apr_int64_t now)
{
    slot_t *b, *victim = NULL, *oldest = NULL, c, v;
    apr_int64_t oldest_until = 0;
    apr_uint64_t seq;
    int i;

    if (!t || (e->kind != ENTRA_VT_VALID && e->kind != ENTRA_VT_INVALID))
        return;
    b = bucket_of(t, hash);
    /* The same key's slot, else a free or expired one, else the one expiring first. */
    for (i = 0; i < ENTRA_VTAB_WAYS; i++) {
        if (!read_slot(&b[i], &c))
            continue;
        if (same_key(&c, hash, tag)) {
            victim = &b[i];
            break;
        }
        if ((c.w[W_META] & 0xff) == ENTRA_VT_NONE || (apr_int64_t)c.w[W_UNTIL] <= now) {
            if (!victim)
                victim = &b[i];
        }
        else if (!oldest || (apr_int64_t)c.w[W_UNTIL] < oldest_until) {
            oldest = &b[i];
            oldest_until = (apr_int64_t)c.w[W_UNTIL];
        }
    }
    if (!victim)
        victim = oldest;
    if (!victim)
        return;

    memset(&v, 0, sizeof(v));
    v.w[W_META] = (apr_uint64_t)e->kind | (apr_uint64_t)(e->alg & 0xff) << 8 |
                  (apr_uint64_t)(e->reason & 0xff) << 16 |
                  (apr_uint64_t)(e->app_claim & 0xff) << 24 | (apr_uint64_t)(e->has_oid ? 1 : 0)
                                                                   << 32;
    v.w[W_UNTIL] = (apr_uint64_t)e->until;
    memcpy(&v.w[W_HASH], hash, 32);
    v.w[W_TAG] = tag;
    memcpy(&v.w[W_APP], e->app, 16);
    memcpy(&v.w[W_OID], e->oid, 16);

    seq = __atomic_load_n(&victim->w[W_SEQ], __ATOMIC_RELAXED);
    if ((seq & 1) || !__atomic_compare_exchange_n(&victim->w[W_SEQ], &seq, seq + 1, 0,
                                                  __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return; /* another writer has it: a cache may skip a store */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    for (i = 1; i < W_COUNT; i++)
        __atomic_store_n(&victim->w[i], v.w[i], __ATOMIC_RELAXED);
    __atomic_store_n(&victim->w[W_SEQ], seq + 2, __ATOMIC_RELEASE);
}

int entra_vtab_reason_code(const char *why)
{
    int i;
    for (i = 1; why && i < (int)(sizeof(reasons) / sizeof(reasons[0])); i++)
        if (strcmp(why, reasons[i]) == 0)
            return i;
    return 0;
}

const char *entra_vtab_reason(int code)
{
    if (code < 1 || code >= (int)(sizeof(reasons) / sizeof(reasons[0])))
        return ENTRA_WHY_BAD_SIGNATURE;
    return reasons[code];
}

apr_uint64_t entra_vtab_tag(const char *s)
{
    apr_uint64_t h = 0xcbf29ce484222325ULL;
    for (; s && *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int entra_guid_parse(const char *s, unsigned char *out)
{
    int i, n = 0, hi, lo;

    if (!s || strlen(s) != 36)
        return 0;
    for (i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i++] != '-')
                return 0;
            continue;
        }
        hi = hexval(s[i]);
        lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return 0;
        out[n++] = (unsigned char)(hi << 4 | lo);
        i += 2;
    }
    return 1;
}

void entra_guid_format(const unsigned char *g, char *out)
{
    static const char hexd[] = "0123456789abcdef";
    int i, o = 0;
    for (i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hexd[g[i] >> 4];
        out[o++] = hexd[g[i] & 15];
    }
    out[o] = '\0';
}
