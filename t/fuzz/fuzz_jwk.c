/* JWK and JWKS import (RSA, EC, x5c certificates): entra_keyset_from_jwks on the input as
 * a JWKS (a lone JWK is wrapped as {"keys":[jwk]}). Every imported key has a kid and a
 * public key, RSA keys have at least 2048 bits, and the compact form stored in the cache
 * imports back to the same keys, in the same order. */
#include <string.h>
#include <openssl/evp.h>

#include "entra_json.h"
#include "entra_jwk.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    apr_pool_t *p;
    json_t *doc, *again;
    entra_keyset *ks = NULL, *ks2 = NULL;
    const char *why = NULL;
    char *text;
    int i;

    apr_pool_create(&p, fuzz_init());
    if (entra_json_parse_object(p, (const char *)data, size, 256 * 1024, &doc, &why) !=
        APR_SUCCESS)
        goto done;
    if (!json_object_get(doc, "keys") && json_object_get(doc, "kty"))
        doc = entra_json_pool_own(p, json_pack("{s:[O]}", "keys", doc));
    if (entra_keyset_from_jwks(p, doc, "fuzz", &ks, &why) != APR_SUCCESS) {
        FUZZ_ASSERT(!ks && why && !json_is_array(json_object_get(doc, "keys")));
        goto done;
    }
    FUZZ_ASSERT(ks && ks->compact);
    for (i = 0; i < ks->keys->nelts; i++) {
        const entra_key *k = &APR_ARRAY_IDX(ks->keys, i, entra_key);
        FUZZ_ASSERT(k->kid && *k->kid && k->pkey);
        FUZZ_ASSERT(entra_keyset_find(ks, k->kid) == k); /* kids are unique */
        FUZZ_ASSERT(k->is_rsa == (EVP_PKEY_get_base_id(k->pkey) == EVP_PKEY_RSA));
        FUZZ_ASSERT(k->is_rsa ? EVP_PKEY_get_bits(k->pkey) >= ENTRA_MIN_RSA_BITS
                              : k->crv != NULL);
    }
    text = entra_json_dump(p, ks->compact);
    FUZZ_ASSERT(text);
    FUZZ_ASSERT(entra_json_parse_object(p, text, strlen(text), 1 << 22, &again, &why) ==
                APR_SUCCESS);
    FUZZ_ASSERT(entra_keyset_from_jwks(p, again, "fuzz-compact", &ks2, &why) == APR_SUCCESS);
    FUZZ_ASSERT(ks2->keys->nelts == ks->keys->nelts);
    for (i = 0; i < ks->keys->nelts; i++) {
        const entra_key *a = &APR_ARRAY_IDX(ks->keys, i, entra_key);
        const entra_key *b = &APR_ARRAY_IDX(ks2->keys, i, entra_key);
        FUZZ_ASSERT(strcmp(a->kid, b->kid) == 0 && a->is_rsa == b->is_rsa);
        FUZZ_ASSERT(EVP_PKEY_eq(a->pkey, b->pkey) == 1);
        FUZZ_ASSERT((a->issuer == NULL) == (b->issuer == NULL));
    }
done:
    apr_pool_destroy(p);
    return 0;
}
