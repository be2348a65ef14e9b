/* entra_metrics: the counter block of the status page (layout, exact sums when processes and
 * threads share slots, identities, the histogram, and the table of reason codes). */
#include "unit.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "entra_metrics.h"

static void *shared_block(unsigned slots, apr_size_t *bytes)
{
    void *mem;
    *bytes = entra_metrics_bytes(slots);
    mem = mmap(NULL, *bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        fprintf(stderr, "test_metrics: mmap failed\n");
        exit(2);
    }
    return mem;
}

static void test_layout(void)
{
    apr_size_t bytes;
    void *mem = shared_block(3, &bytes);
    apr_uint64_t sum[ENTRA_M_COUNT];

    CHECK(entra_metrics_bytes(3) > entra_metrics_bytes(2));
    CHECK(entra_metrics_bytes(0) == entra_metrics_bytes(1));
    CHECK(entra_metrics_init(mem, bytes - 1, 3) == APR_EINVAL);
    CHECK(entra_metrics_init(NULL, bytes, 3) == APR_EINVAL);
    /* Not initialised: a process using it counts nothing, a reader reads zeros. */
    entra_metrics_use(mem, 1);
    CHECK(entra_metrics_slot == NULL);
    entra_metrics_add(ENTRA_M_KEYS_OK, 1);
    CHECK(entra_metrics_init(mem, bytes, 3) == APR_SUCCESS);
    entra_metrics_use(mem, 7);
    CHECK(entra_metrics_slot != NULL);
    entra_metrics_add(ENTRA_M_KEYS_OK, 2);
    entra_metrics_use(mem, 8);
    entra_metrics_add(ENTRA_M_KEYS_OK, 3);
    entra_metrics_sum(mem, sum);
    CHECK(sum[ENTRA_M_KEYS_OK] == 5);
    CHECK(sum[ENTRA_M_KEYS_ERROR] == 0);
    /* Slots sit on their own cache lines. */
    entra_metrics_use(mem, 0);
    CHECK(((apr_uintptr_t)entra_metrics_slot & 63) == 0);
    entra_metrics_use(NULL, 0);
    entra_metrics_add(ENTRA_M_KEYS_OK, 100);
    entra_metrics_sum(mem, sum);
    CHECK(sum[ENTRA_M_KEYS_OK] == 5);
    munmap(mem, bytes);
}

#define PROCS 4
#define THREADS 4
#define ADDS 200000

static void *adder(void *arg)
{
    int i;
    (void)arg;
    for (i = 0; i < ADDS; i++) {
        entra_metrics_add(ENTRA_M_AUTHZ_GRANTED, 1);
        entra_metrics_authn(ENTRA_AUTHN_INVALID, ENTRA_R_EXPIRED, entra_metrics_now() - 1000, i & 1);
    }
    return NULL;
}

/* Four processes of four threads each on two slots: every add counts. */
static void test_exact_when_sharing_slots(void)
{
    apr_size_t bytes;
    void *mem = shared_block(2, &bytes);
    apr_uint64_t sum[ENTRA_M_COUNT];
    pid_t pids[PROCS];
    int i, status, ok = 1;

    entra_metrics_init(mem, bytes, 2);
    for (i = 0; i < PROCS; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            pthread_t t[THREADS];
            int k;
            entra_metrics_use(mem, (unsigned long)i);
            for (k = 0; k < THREADS; k++)
                pthread_create(&t[k], NULL, adder, NULL);
            for (k = 0; k < THREADS; k++)
                pthread_join(t[k], NULL);
            _exit(0);
        }
    }
    for (i = 0; i < PROCS; i++)
        ok = waitpid(pids[i], &status, 0) == pids[i] && WIFEXITED(status) && ok;
    CHECK(ok);
    entra_metrics_sum(mem, sum);
    CHECK(sum[ENTRA_M_AUTHZ_GRANTED] == (apr_uint64_t)PROCS * THREADS * ADDS);
    CHECK(sum[ENTRA_M_AUTHN + ENTRA_AUTHN_INVALID] == (apr_uint64_t)PROCS * THREADS * ADDS);
    CHECK(sum[ENTRA_M_REASON + ENTRA_R_EXPIRED] == (apr_uint64_t)PROCS * THREADS * ADDS);
    CHECK(sum[ENTRA_M_VERDICT_HIT] == (apr_uint64_t)PROCS * THREADS * ADDS / 2);
    CHECK(sum[ENTRA_M_VERDICT_MISS] == (apr_uint64_t)PROCS * THREADS * ADDS / 2);
    CHECK(sum[ENTRA_M_DURATION_COUNT] == (apr_uint64_t)PROCS * THREADS * ADDS);
    munmap(mem, bytes);
}

static void test_authn_and_histogram(void)
{
    apr_size_t bytes;
    void *mem = shared_block(1, &bytes);
    apr_uint64_t sum[ENTRA_M_COUNT];
    apr_uint64_t now;

    entra_metrics_init(mem, bytes, 1);
    entra_metrics_use(mem, 0);
    /* 3 ms ago: the 5 ms bucket (index 8) */
    now = entra_metrics_now();
    entra_metrics_authn(ENTRA_AUTHN_VALID, ENTRA_R_OTHER, now - 3000000, 1);
    entra_metrics_authn(ENTRA_AUTHN_MISSING, ENTRA_R_MISSING_TOKEN, 0, -1);
    entra_metrics_authn(ENTRA_AUTHN_INVALID, ENTRA_R_MULTIPLE_TOKENS, 0, 1); /* no validation */
    /* A start far in the past lands in +Inf. */
    entra_metrics_authn(ENTRA_AUTHN_ERROR, ENTRA_R_NO_KEYS, entra_metrics_now() - 5000000000ull, 0);
    entra_metrics_sum(mem, sum);
    CHECK(sum[ENTRA_M_AUTHN + ENTRA_AUTHN_VALID] == 1);
    CHECK(sum[ENTRA_M_AUTHN + ENTRA_AUTHN_MISSING] == 1);
    CHECK(sum[ENTRA_M_AUTHN + ENTRA_AUTHN_ERROR] == 1);
    CHECK(sum[ENTRA_M_AUTHN + ENTRA_AUTHN_INVALID] == 1);
    CHECK(sum[ENTRA_M_REASON + ENTRA_R_OTHER] == 0); /* valid is no rejection */
    CHECK(sum[ENTRA_M_REASON + ENTRA_R_MISSING_TOKEN] == 1);
    CHECK(sum[ENTRA_M_REASON + ENTRA_R_NO_KEYS] == 1);
    CHECK(sum[ENTRA_M_VERDICT_HIT] == 1 && sum[ENTRA_M_VERDICT_MISS] == 1);
    CHECK(sum[ENTRA_M_DURATION_COUNT] == 2);
    CHECK(sum[ENTRA_M_HIST + 8] == 1);
    CHECK(sum[ENTRA_M_HIST + ENTRA_HIST_N] == 1);
    CHECK(sum[ENTRA_M_DURATION_NS] >= 5003000000ull);
    entra_metrics_use(NULL, 0);
    munmap(mem, bytes);
}

static void test_identities(void)
{
    apr_size_t bytes;
    void *mem = shared_block(1, &bytes);
    apr_uint64_t sum[ENTRA_M_COUNT];
    char name[80];
    int i;

    entra_metrics_init(mem, bytes, 1);
    CHECK(entra_metrics_identity(mem, "sys", 0) == -1);
    CHECK(entra_metrics_identity(mem, "sys", 1) == 0);
    CHECK(entra_metrics_identity(mem, "sys", 1) == 0);
    CHECK(entra_metrics_identity(mem, "api-caller", 1) == 1);
    CHECK(entra_metrics_identity(mem, "sy", 0) == -1);
    CHECK_STR_EQ(entra_metrics_identity_name(mem, 1), "api-caller");
    CHECK(entra_metrics_identity_name(mem, 2) == NULL);
    memset(name, 'x', 70);
    name[70] = '\0';
    CHECK(entra_metrics_identity(mem, name, 1) == -1); /* too long to keep */
    for (i = 2; i < ENTRA_METRICS_IDENTITIES; i++)
        CHECK(entra_metrics_identity(mem, apr_psprintf(up, "id%d", i), 1) == i);
    CHECK(entra_metrics_identity(mem, "one-too-many", 1) == -1);

    entra_metrics_use(mem, 0);
    entra_metrics_token_fetch("api-caller", 1);
    entra_metrics_token_fetch("api-caller", 0);
    entra_metrics_token_fetch("api-caller", 0);
    entra_metrics_token_fetch("unknown", 1); /* not registered: not counted */
    entra_metrics_sum(mem, sum);
    CHECK(sum[ENTRA_M_TOKEN + 2] == 1 && sum[ENTRA_M_TOKEN + 3] == 2);
    CHECK(sum[ENTRA_M_TOKEN + 0] == 0 && sum[ENTRA_M_TOKEN + 1] == 0);
    entra_metrics_use(NULL, 0);
    munmap(mem, bytes);
}

static void test_reason_codes(void)
{
    static const struct {
        const char *why;
        entra_reason want;
    } cases[] = {
        {"token expired", ENTRA_R_EXPIRED},
        {"token not yet valid", ENTRA_R_NOT_YET_VALID},
        {"token issued in the future", ENTRA_R_ISSUED_IN_FUTURE},
        {"token lifetime exceeds the maximum", ENTRA_R_LIFETIME},
        {"token has no exp", ENTRA_R_BAD_TIME_CLAIM},
        {"token time claim is not a number", ENTRA_R_BAD_TIME_CLAIM},
        {"token audience not accepted", ENTRA_R_BAD_AUDIENCE},
        {"token audience is malformed", ENTRA_R_BAD_AUDIENCE},
        {"token has no audience", ENTRA_R_BAD_AUDIENCE},
        {"token issuer not accepted", ENTRA_R_BAD_ISSUER},
        {"token has no issuer", ENTRA_R_BAD_ISSUER},
        {"token tid does not match the tenant", ENTRA_R_BAD_ISSUER},
        {"token tid is not a tenant id", ENTRA_R_BAD_ISSUER},
        {"token tenant not allowed", ENTRA_R_TENANT_NOT_ALLOWED},
        {"token signing key not found", ENTRA_R_UNKNOWN_KID},
        {"signing key belongs to another issuer", ENTRA_R_KEY_ISSUER},
        {"invalid signature", ENTRA_R_BAD_SIGNATURE},
        {"token algorithm does not match the signing key", ENTRA_R_ALG_KEY_MISMATCH},
        {"token algorithm not allowed", ENTRA_R_ALG_NOT_ALLOWED},
        {"unsigned token", ENTRA_R_UNSIGNED},
        {"encrypted tokens (JWE) are not accepted", ENTRA_R_ENCRYPTED},
        {"token too large", ENTRA_R_TOO_LARGE},
        {"token header has unsupported crit", ENTRA_R_CRIT},
        {"token header has no kid", ENTRA_R_MISSING_KID},
        {"token header has no alg", ENTRA_R_MALFORMED},
        {"token header: duplicate JSON member", ENTRA_R_MALFORMED},
        {"token claims: malformed JSON", ENTRA_R_MALFORMED},
        {"token is not strict base64url", ENTRA_R_MALFORMED},
        {"token is not a JWS with three segments", ENTRA_R_MALFORMED},
        {"empty token segment", ENTRA_R_MALFORMED},
        {"token is for another audience (e.g. Microsoft Graph); request a token for this API's "
         "audience",
         ENTRA_R_FOREIGN_AUDIENCE},
        {"token has no oid claim", ENTRA_R_MISSING_USER_CLAIM},
        {"token has no expiry claim", ENTRA_R_MISSING_USER_CLAIM},
        {"something new", ENTRA_R_OTHER},
        {NULL, ENTRA_R_OTHER},
    };
    size_t i;
    int a, b;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        CHECK_MSG(entra_metrics_reason(cases[i].why) == cases[i].want, "%s -> %s",
                  cases[i].why ? cases[i].why : "(null)",
                  entra_metrics_reason_name(entra_metrics_reason(cases[i].why)));
    /* Every code has a distinct, short, lower-case name. */
    for (a = 0; a < ENTRA_R_COUNT; a++) {
        const char *n = entra_metrics_reason_name((entra_reason)a), *c;
        CHECK(n && *n && strlen(n) <= 20);
        for (c = n; c && *c; c++)
            CHECK_MSG((*c >= 'a' && *c <= 'z') || *c == '_', "%s", n);
        for (b = 0; b < a; b++)
            CHECK(strcmp(n, entra_metrics_reason_name((entra_reason)b)) != 0);
    }
    CHECK_STR_EQ(entra_metrics_reason_name(ENTRA_R_COUNT), "other");
}

static void test_histogram_labels(void)
{
    static const apr_uint64_t bounds[ENTRA_HIST_N] = ENTRA_HIST_BOUNDS;
    static const char *const labels[ENTRA_HIST_N] = ENTRA_HIST_LABELS;
    int i;
    for (i = 0; i < ENTRA_HIST_N; i++) {
        double s = strtod(labels[i], NULL);
        CHECK_MSG((apr_uint64_t)(s * 1e9 + 0.5) == bounds[i], "%s vs %llu ns", labels[i],
                  (unsigned long long)bounds[i]);
        CHECK(labels[i][0] != '.');
        if (i)
            CHECK(bounds[i] > bounds[i - 1]);
    }
}

int main(void)
{
    unit_begin("test_metrics");
    RUN(test_layout);
    RUN(test_exact_when_sharing_slots);
    RUN(test_authn_and_histogram);
    RUN(test_identities);
    RUN(test_reason_codes);
    RUN(test_histogram_labels);
    return unit_end();
}
