/* entra_flight.c: the single-flight lease with bounded, cancellable waits shared by keys and
 * tokens; backoff records and delays; Retry-After parsing (clamped, overflow-safe). */
#include "unit.h"

#include <apr_thread_proc.h>
#include <apr_time.h>

#include "entra_flight.h"
#include "entra_store.h"

static entra_store *store;

static void test_retry_after(void)
{
    char date[APR_RFC822_DATE_LEN];
    CHECK_INT_EQ(entra_retry_after_parse("120"), 120);
    CHECK_INT_EQ(entra_retry_after_parse(" 7 "), 7);
    CHECK_INT_EQ(entra_retry_after_parse("0"), 0);
    CHECK_INT_EQ(entra_retry_after_parse("300"), 300);
    CHECK_INT_EQ(entra_retry_after_parse("301"), ENTRA_BACKOFF_MAX);
    /* 9.3e12 s overflowed apr_time_from_sec; 1e30 overflowed apr_atoi64. */
    CHECK_INT_EQ(entra_retry_after_parse("9300000000000"), ENTRA_BACKOFF_MAX);
    CHECK_INT_EQ(entra_retry_after_parse("1000000000000000000000000000000"), ENTRA_BACKOFF_MAX);
    CHECK_INT_EQ(entra_retry_after_parse("-5"), -1);
    CHECK_INT_EQ(entra_retry_after_parse("1e30"), -1);
    CHECK_INT_EQ(entra_retry_after_parse("1.5"), -1);
    CHECK_INT_EQ(entra_retry_after_parse("garbage"), -1);
    CHECK_INT_EQ(entra_retry_after_parse(""), -1);
    CHECK_INT_EQ(entra_retry_after_parse(NULL), -1);
    CHECK_INT_EQ(entra_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT"), 0);
    apr_rfc822_date(date, apr_time_now() + apr_time_from_sec(86400 * 365));
    CHECK_INT_EQ(entra_retry_after_parse(date), ENTRA_BACKOFF_MAX);
    apr_rfc822_date(date, apr_time_now() + apr_time_from_sec(60));
    CHECK(entra_retry_after_parse(date) >= 58 && entra_retry_after_parse(date) <= 60);
}

static void test_backoff_delay(void)
{
    CHECK_INT_EQ(entra_backoff_delay(1, 5, 60), 5);
    CHECK_INT_EQ(entra_backoff_delay(2, 5, 60), 10);
    CHECK_INT_EQ(entra_backoff_delay(4, 5, 60), 40);
    CHECK_INT_EQ(entra_backoff_delay(5, 5, 60), 60);
    CHECK_INT_EQ(entra_backoff_delay(0, 30, 300), 30);
    CHECK_INT_EQ(entra_backoff_delay(1000000, 30, 300), 300);
    CHECK_INT_EQ(entra_backoff_delay(2147483647, 1, 2147483647L), 2147483647L);
}

static void test_backoff_record(void)
{
    entra_backoff b;
    const char *why = NULL;
    long ra = -1;
    CHECK(!entra_backoff_get(store, up, "b", &b));
    CHECK(!entra_backoff_active(store, up, "b", &why, &ra));
    CHECK_INT_EQ(entra_backoff_fail(store, up, "b", 30, "HTTP 500"), 1);
    CHECK(entra_backoff_active(store, up, "b", &why, &ra));
    CHECK_STR_EQ(why, "HTTP 500");
    CHECK(ra >= 29 && ra <= 30);
    /* A huge delay is clamped. */
    CHECK_INT_EQ(entra_backoff_fail(store, up, "b", 2147483647L, "x"), 2);
    CHECK(entra_backoff_active(store, up, "b", &why, &ra));
    CHECK(ra <= ENTRA_BACKOFF_MAX);
    /* Zero delay: counted, but no longer forbidding an attempt. */
    CHECK_INT_EQ(entra_backoff_fail(store, up, "b", -7, "y"), 3);
    CHECK(!entra_backoff_active(store, up, "b", &why, &ra));
    CHECK(entra_backoff_get(store, up, "b", &b) && b.n == 3);
    entra_backoff_clear(store, "b");
    CHECK(!entra_backoff_get(store, up, "b", &b));
}

static volatile int cancel_flag;

static void *APR_THREAD_FUNC set_cancel_later(apr_thread_t *t, void *data)
{
    apr_sleep(apr_time_from_msec(150));
    __atomic_store_n(&cancel_flag, 1, __ATOMIC_RELEASE);
    (void)t;
    (void)data;
    return NULL;
}

static void test_sleep(void)
{
    apr_time_t t0 = apr_time_now();
    apr_thread_t *thd;
    apr_status_t rv;

    cancel_flag = 0;
    CHECK_INT_EQ(entra_sleep_until(t0 + apr_time_from_msec(120), &cancel_flag), APR_SUCCESS);
    CHECK(apr_time_now() - t0 >= apr_time_from_msec(120));
    CHECK(apr_time_now() - t0 < apr_time_from_msec(400));
    CHECK_INT_EQ(entra_sleep_until(t0, NULL), APR_SUCCESS);

    t0 = apr_time_now();
    CHECK_INT_EQ(apr_thread_create(&thd, NULL, set_cancel_later, NULL, up), APR_SUCCESS);
    CHECK_INT_EQ(entra_sleep_until(t0 + apr_time_from_sec(30), &cancel_flag), APR_EINTR);
    CHECK_MSG(apr_time_now() - t0 < apr_time_from_msec(150) + ENTRA_WAIT_STEP + apr_time_from_msec(100),
              "woke after %ld ms", (long)apr_time_as_msec(apr_time_now() - t0));
    apr_thread_join(&rv, thd);
    cancel_flag = 0;
}

/* A flight whose store never gets a result and whose holder records nothing. */
typedef struct {
    int fetches, newer, fail;
} fl_state;

static int fl_newer(void *b, apr_pool_t *p)
{
    (void)p;
    return ((fl_state *)b)->newer;
}

static int fl_failed(void *b, apr_pool_t *p, const char **why)
{
    (void)p;
    if (((fl_state *)b)->fail)
        *why = "holder failed";
    return ((fl_state *)b)->fail;
}

static apr_status_t fl_fetch(void *b, apr_pool_t *p, apr_time_t deadline, const char **why)
{
    (void)p;
    (void)deadline;
    ((fl_state *)b)->fetches++;
    *why = "fetched";
    return APR_SUCCESS;
}

static entra_flight mk_flight(fl_state *st, long bound_ms)
{
    entra_flight f;
    memset(&f, 0, sizeof(f));
    f.store = store;
    f.lease = "lease";
    f.deadline = apr_time_now() + apr_time_from_msec(bound_ms);
    f.lease_ttl = apr_time_from_sec(1);
    f.step = apr_time_from_msec(20);
    f.cancel = &cancel_flag;
    f.roomed = 1;
    f.baton = st;
    f.newer = fl_newer;
    f.fetch = fl_fetch;
    f.failed = fl_failed;
    return f;
}

static void test_flight(void)
{
    fl_state st = {0, 0, 0};
    entra_flight f = mk_flight(&st, 300);
    const char *why = NULL;
    char *v;
    apr_size_t len;
    apr_time_t t0;
    apr_thread_t *thd;
    apr_status_t rv;

    /* Free lease: we fetch, and the lease is gone afterwards. */
    CHECK_INT_EQ(entra_flight_run(&f, up, &why), APR_SUCCESS);
    CHECK_INT_EQ(st.fetches, 1);
    CHECK(store->get(store, "lease", up, 8, &v, &len) != APR_SUCCESS);

    /* Held lease, holder silent: the wait ends at the deadline, not at the lease's expiry. */
    store->add(store, "lease", "1", 1, apr_time_now() + apr_time_from_sec(60));
    f = mk_flight(&st, 300);
    t0 = apr_time_now();
    CHECK_INT_EQ(entra_flight_run(&f, up, &why), APR_TIMEUP);
    CHECK(apr_time_now() - t0 >= apr_time_from_msec(290));
    CHECK(apr_time_now() - t0 < apr_time_from_msec(600));
    CHECK_INT_EQ(st.fetches, 1);

    /* The holder stores a result: the waiter sees it. */
    st.newer = 1;
    f = mk_flight(&st, 5000);
    CHECK_INT_EQ(entra_flight_run(&f, up, &why), APR_SUCCESS);
    st.newer = 0;

    /* The holder records a failure: the waiter reports it. */
    st.fail = 1;
    f = mk_flight(&st, 5000);
    CHECK_INT_EQ(entra_flight_run(&f, up, &why), APR_EAGAIN);
    CHECK_STR_EQ(why, "holder failed");
    st.fail = 0;

    /* Cancel ends a long wait promptly. */
    f = mk_flight(&st, 60000);
    t0 = apr_time_now();
    CHECK_INT_EQ(apr_thread_create(&thd, NULL, set_cancel_later, NULL, up), APR_SUCCESS);
    CHECK_INT_EQ(entra_flight_run(&f, up, &why), APR_EINTR);
    CHECK(apr_time_now() - t0 < apr_time_from_msec(500));
    apr_thread_join(&rv, thd);
    /* Already cancelled: not even the lease is taken. */
    store->remove(store, "lease");
    CHECK_INT_EQ(entra_flight_run(&f, up, &why), APR_EINTR);
    CHECK(store->get(store, "lease", up, 8, &v, &len) != APR_SUCCESS);
    CHECK_INT_EQ(st.fetches, 1);
    cancel_flag = 0;

    /* The lease vanishes without a result (holder died and it expired): EAGAIN. */
    store->add(store, "lease", "1", 1, apr_time_now() + apr_time_from_msec(100));
    f = mk_flight(&st, 5000);
    t0 = apr_time_now();
    CHECK_INT_EQ(entra_flight_run(&f, up, &why), APR_EAGAIN);
    CHECK(apr_time_now() - t0 < apr_time_from_sec(1));
}

/* Waits on another's fetch for `ms` in a thread (the holder never finishes). */
static void *APR_THREAD_FUNC wait_a_while(apr_thread_t *t, void *data)
{
    fl_state st = {0, 0, 0};
    entra_flight f = mk_flight(&st, 400);
    const char *why;
    *(apr_status_t *)data = entra_flight_run(&f, up, &why);
    (void)t;
    return NULL;
}

/* The waiting room: places are refused when full, a dead waiter's place frees at its
 * deadline, and a process's own limit holds without shared places. */
static void test_waiting_room(void)
{
    apr_uint64_t slots[2] = {0, 0};
    fl_state st = {0, 0, 0};
    entra_flight f;
    const char *why = NULL;
    apr_time_t t0;
    apr_thread_t *thd;
    apr_status_t rv, theirs;

    store->add(store, "lease", "1", 1, apr_time_now() + apr_time_from_sec(60));
    entra_flight_room_init(slots, 2, 0);
    /* Both places taken by live waiters elsewhere: refused at once, nothing fetched. */
    slots[0] = slots[1] = (apr_uint64_t)(apr_time_now() + apr_time_from_sec(30));
    f = mk_flight(&st, 5000);
    t0 = apr_time_now();
    CHECK_INT_EQ(entra_flight_run(&f, up, &why), APR_EBUSY);
    CHECK_STR_EQ(why, "too many requests already waiting for a fetch in progress");
    CHECK(apr_time_now() - t0 < apr_time_from_msec(100));
    CHECK_INT_EQ(st.fetches, 0);
    /* One waiter died: its deadline passed, its place serves the next waiter, who gives it
     * back when its own wait ends. */
    slots[1] = (apr_uint64_t)(apr_time_now() - 1);
    f = mk_flight(&st, 200);
    CHECK_INT_EQ(entra_flight_run(&f, up, &why), APR_TIMEUP);
    CHECK(slots[1] == 0);
    CHECK(slots[0] != 0);

    /* The per-process limit: one waiter here, the second is refused while it waits. */
    entra_flight_room_init(NULL, 0, 1);
    CHECK_INT_EQ(apr_thread_create(&thd, NULL, wait_a_while, &theirs, up), APR_SUCCESS);
    apr_sleep(apr_time_from_msec(100));
    f = mk_flight(&st, 200);
    CHECK_INT_EQ(entra_flight_run(&f, up, &why), APR_EBUSY);
    apr_thread_join(&rv, thd);
    CHECK_INT_EQ(theirs, APR_TIMEUP);
    /* Its place is back: the next one waits (to its deadline). */
    f = mk_flight(&st, 100);
    CHECK_INT_EQ(entra_flight_run(&f, up, &why), APR_TIMEUP);

    entra_flight_room_init(NULL, 0, 0);
    store->remove(store, "lease");
}

int main(void)
{
    unit_begin("test_flight");
    if (entra_memstore_create(up, 64, &store) != APR_SUCCESS)
        return 2;
    RUN(test_retry_after);
    RUN(test_backoff_delay);
    RUN(test_backoff_record);
    RUN(test_sleep);
    RUN(test_flight);
    RUN(test_waiting_room);
    return unit_end();
}
