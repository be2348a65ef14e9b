#include <stdlib.h>
#include <string.h>
#include <apr_date.h>
#include <apr_lib.h>
#include <apr_strings.h>

#include "entra_flight.h"
#include "entra_json.h"

#define BACKOFF_RECORD_MAX 1024
#define BACKOFF_MEMORY 3600 /* seconds a failure count is remembered */

int entra_cancelled(const volatile int *cancel)
{
    /* Set by another thread (child_stopping): an atomic load, not a plain read. */
    return cancel && __atomic_load_n(cancel, __ATOMIC_ACQUIRE);
}

apr_status_t entra_sleep_until(apr_time_t until, const volatile int *cancel)
{
    for (;;) {
        apr_time_t now = apr_time_now();
        if (entra_cancelled(cancel))
            return APR_EINTR;
        if (now >= until)
            return APR_SUCCESS;
        apr_sleep(until - now < ENTRA_WAIT_STEP ? until - now : ENTRA_WAIT_STEP);
    }
}

static apr_uint64_t *room;     /* machine-wide places: each 0 or its waiter's deadline */
static int room_n;
static int room_per_process;   /* 0: no per-process limit */
static apr_uint32_t room_here; /* waiters of this process */

void entra_flight_room_init(apr_uint64_t *slots, int n, int per_process)
{
    room = n > 0 ? slots : NULL;
    room_n = room ? n : 0;
    room_per_process = per_process > 0 ? per_process : 0;
    room_here = 0;
}

/* A place in the waiting room until `deadline`: its index, -2 when the room is not
 * limited, -1 when it is full. */
static int room_enter(apr_time_t deadline)
{
    apr_uint64_t now = (apr_uint64_t)apr_time_now(), v;
    int i;

    if (room_per_process &&
        __atomic_add_fetch(&room_here, 1, __ATOMIC_ACQ_REL) > (apr_uint32_t)room_per_process) {
        __atomic_sub_fetch(&room_here, 1, __ATOMIC_ACQ_REL);
        return -1;
    }
    if (!room)
        return -2;
    for (i = 0; i < room_n; i++) {
        v = __atomic_load_n(&room[i], __ATOMIC_ACQUIRE);
        /* Free, or left behind by a waiter that died: its deadline has passed. */
        if (v < now && __atomic_compare_exchange_n(&room[i], &v, (apr_uint64_t)deadline, 0,
                                                   __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return i;
    }
    if (room_per_process)
        __atomic_sub_fetch(&room_here, 1, __ATOMIC_ACQ_REL);
    return -1;
}

static void room_leave(int place, apr_time_t deadline)
{
    apr_uint64_t mine = (apr_uint64_t)deadline;
    if (room_per_process)
        __atomic_sub_fetch(&room_here, 1, __ATOMIC_ACQ_REL);
    /* Only if it is still ours: after its deadline another waiter may have taken it. */
    if (place >= 0)
        __atomic_compare_exchange_n(&room[place], &mine, 0, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE);
}

/* Waits for the holder of the lease: see entra_flight_run. */
static apr_status_t wait_for_holder(const entra_flight *f, apr_pool_t *p, apr_interval_time_t step,
                                    const char **why)
{
    char *v;
    apr_size_t len;

    for (;;) {
        apr_time_t now = apr_time_now(), until = now + step;
        if (now >= f->deadline) {
            *why = "timed out waiting for a fetch in progress";
            return APR_TIMEUP;
        }
        if (entra_sleep_until(until < f->deadline ? until : f->deadline, f->cancel) != APR_SUCCESS) {
            *why = "cancelled (process exiting)";
            return APR_EINTR;
        }
        if (f->newer(f->baton, p))
            return APR_SUCCESS;
        if (f->failed(f->baton, p, why))
            return APR_EAGAIN;
        if (f->store->get(f->store, f->lease, p, 8, &v, &len) != APR_SUCCESS) {
            /* The holder finished (or its lease expired): a result may have come just now. */
            if (f->newer(f->baton, p))
                return APR_SUCCESS;
            if (!f->failed(f->baton, p, why))
                *why = "the fetch in progress ended without a result";
            return APR_EAGAIN;
        }
    }
}

apr_status_t entra_flight_run(const entra_flight *f, apr_pool_t *p, const char **why)
{
    apr_interval_time_t step = f->step > 0 && f->step < ENTRA_WAIT_STEP ? f->step
                                                                        : ENTRA_WAIT_STEP;
    apr_status_t rv;
    int place;

    if (entra_cancelled(f->cancel)) {
        *why = "cancelled (process exiting)";
        return APR_EINTR;
    }
    if (f->store->add(f->store, f->lease, "1", 1, f->deadline + f->lease_ttl) == APR_SUCCESS) {
        /* Another holder may have finished between the caller's look and our lease. */
        if (f->newer(f->baton, p))
            rv = APR_SUCCESS;
        else
            rv = f->fetch(f->baton, p, f->deadline, why);
        f->store->remove(f->store, f->lease);
        return rv;
    }
    place = f->roomed ? room_enter(f->deadline) : -3;
    if (place == -1) {
        *why = "too many requests already waiting for a fetch in progress";
        return APR_EBUSY;
    }
    rv = wait_for_holder(f, p, step, why);
    if (place != -3)
        room_leave(place, f->deadline);
    return rv;
}

int entra_backoff_get(entra_store *s, apr_pool_t *p, const char *key, entra_backoff *out)
{
    char *val;
    apr_size_t len;
    json_t *j;
    const char *why;

    memset(out, 0, sizeof(*out));
    if (s->get(s, key, p, BACKOFF_RECORD_MAX, &val, &len) != APR_SUCCESS ||
        entra_json_parse_object(p, val, len, BACKOFF_RECORD_MAX, &j, &why) != APR_SUCCESS)
        return 0;
    out->n = (int)json_integer_value(json_object_get(j, "n"));
    out->next = (apr_int64_t)json_integer_value(json_object_get(j, "next"));
    out->err = entra_json_str(j, "err") ? apr_pstrdup(p, entra_json_str(j, "err")) : "fetch failed";
    return 1;
}

int entra_backoff_active(entra_store *s, apr_pool_t *p, const char *key, const char **why,
                         long *retry_after)
{
    entra_backoff b;
    apr_int64_t now = (apr_int64_t)apr_time_sec(apr_time_now());

    if (!entra_backoff_get(s, p, key, &b) || b.next <= now)
        return 0;
    *why = b.err;
    if (retry_after)
        *retry_after = (long)(b.next - now < ENTRA_BACKOFF_MAX ? b.next - now : ENTRA_BACKOFF_MAX);
    return 1;
}

long entra_backoff_delay(int n, long base, long max)
{
    long d = base;
    for (; n > 1 && d < max; n--)
        d = d > max / 2 ? max : d * 2;
    return d < max ? d : max;
}

int entra_backoff_fail(entra_store *s, apr_pool_t *p, const char *key, long delay,
                       const char *err)
{
    entra_backoff b;
    apr_int64_t now = (apr_int64_t)apr_time_sec(apr_time_now());
    int n = entra_backoff_get(s, p, key, &b) && b.n > 0 && b.n < 1000000 ? b.n + 1 : 1;
    json_t *j;
    char *text;

    if (delay < 0)
        delay = 0;
    if (delay > ENTRA_BACKOFF_MAX)
        delay = ENTRA_BACKOFF_MAX;
    j = json_pack("{s:i, s:I, s:s}", "n", n, "next", (json_int_t)(now + delay), "err",
                  err ? err : "fetch failed");
    text = j ? entra_json_dump(p, entra_json_pool_own(p, j)) : NULL;
    if (text)
        s->put(s, key, text, strlen(text), apr_time_now() + apr_time_from_sec(BACKOFF_MEMORY));
    return n;
}

void entra_backoff_clear(entra_store *s, const char *key)
{
    s->remove(s, key);
}

long entra_retry_after_parse(const char *value)
{
    const char *c = value;
    long secs = 0;
    apr_time_t when;

    if (!value)
        return -1;
    while (*c == ' ' || *c == '\t')
        c++;
    if (apr_isdigit(*c)) {
        /* Saturate digit by digit: 9.3e12 or 1e30 seconds must not overflow anything. */
        for (; apr_isdigit(*c); c++)
            if (secs <= ENTRA_BACKOFF_MAX)
                secs = secs * 10 + (*c - '0');
        while (*c == ' ' || *c == '\t')
            c++;
        if (*c)
            return -1;
        return secs > ENTRA_BACKOFF_MAX ? ENTRA_BACKOFF_MAX : secs;
    }
    /* RFC 9110 also allows an HTTP-date. */
    if ((when = apr_date_parse_http(c)) != APR_DATE_BAD) {
        apr_time_t now = apr_time_now();
        if (when <= now)
            return 0;
        return when - now >= apr_time_from_sec(ENTRA_BACKOFF_MAX)
                   ? ENTRA_BACKOFF_MAX
                   : (long)apr_time_sec(when - now);
    }
    return -1;
}
