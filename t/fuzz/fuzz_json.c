/* entra_json_parse_object against jansson's json_loadb(JSON_REJECT_DUPLICATES): the same
 * verdict and, when both accept, equal values. The documented differences are allowed:
 * ours refuses NUL bytes anywhere (jansson skips some) and nesting deeper than 256 levels
 * (a scalar inside the 256th container counts as the 257th), and takes only objects. */
#include <string.h>

#include "entra_json.h"
#include "fuzz.h"

#define MAX_DEPTH 256

/* Levels of `j`, counting every value (a scalar is one level). */
static size_t height(json_t *j)
{
    size_t h = 0, i;
    const char *k;
    json_t *v;

    if (json_is_object(j)) {
        json_object_foreach(j, k, v)
        {
            size_t c = height(v);
            h = c > h ? c : h;
        }
    }
    else if (json_is_array(j)) {
        json_array_foreach(j, i, v)
        {
            size_t c = height(v);
            h = c > h ? c : h;
        }
    }
    return h + 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    apr_pool_t *p;
    json_t *ours = NULL, *theirs;
    json_error_t err;
    const char *why = NULL;
    int ok_ours, ok_theirs, dup_theirs;

    apr_pool_create(&p, fuzz_init());
    ok_ours = entra_json_parse_object(p, (const char *)data, size, 1 << 20, &ours, &why) ==
              APR_SUCCESS;
    FUZZ_ASSERT(ok_ours ? ours != NULL : (ours == NULL && why && *why));
    theirs = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &err);
    dup_theirs = !theirs && json_error_code(&err) == json_error_duplicate_key;
    ok_theirs = theirs && json_is_object(theirs);

    if (memchr(data, 0, size)) {
        FUZZ_ASSERT(!ok_ours);
    }
    else if (ok_theirs && !ok_ours && height(theirs) > MAX_DEPTH) {
        /* deeper than we allow */
    }
    else {
        FUZZ_ASSERT(ok_ours == ok_theirs);
        if (ok_ours) {
            FUZZ_ASSERT(json_equal(ours, theirs));
            FUZZ_ASSERT(height(ours) <= MAX_DEPTH);
        }
        else
            FUZZ_ASSERT(dup_theirs == (strcmp(why, "duplicate JSON member") == 0));
    }
    if (ok_ours) {
        /* What we dump, we read back as the same value. */
        char *text = entra_json_dump(p, ours);
        json_t *again = NULL;
        FUZZ_ASSERT(text);
        FUZZ_ASSERT(entra_json_parse_object(p, text, strlen(text), 1 << 22, &again, &why) ==
                    APR_SUCCESS);
        FUZZ_ASSERT(json_equal(ours, again));
    }
    json_decref(theirs);
    apr_pool_destroy(p);
    return 0;
}
