/* What an Entra access token's claims say about its caller, for authorization: the kind of
 * caller (app-only or user), group and directory-role membership (with groups overage),
 * authentication contexts (acrs) and whether the client can answer a claims challenge
 * (xms_cc). One place for these rules: the Require providers, httpd's Lua rules and the
 * standalone Lua module all call it. No httpd, no Lua. */
#ifndef ENTRA_CLAIMS_H
#define ENTRA_CLAIMS_H

#include <apr_pools.h>
#include <jansson.h>

typedef enum {
    ENTRA_CALLER_NEITHER = 0, /* cannot tell: denied by both entra-app-only and entra-user */
    ENTRA_CALLER_APP,         /* app-only (client credentials, managed identity) */
    ENTRA_CALLER_USER         /* delegated: a user through an application */
} entra_caller;

typedef enum {
    ENTRA_MEMBER_NO = 0,
    ENTRA_MEMBER_YES,
    ENTRA_MEMBER_OVERAGE /* the token does not list the groups: it cannot say */
} entra_member;

/* The caller's kind: `idtyp` ("app"/"user") when present; otherwise app-only when there is
 * no `scp` and `oid` equals `sub`, user when there is an `scp`; neither when `oid` and
 * `sub` are both missing. */
entra_caller entra_claims_caller(const json_t *claims);

/* True when the array-of-strings claim `name` holds one of the `n` values (compared
 * case-insensitively when `nocase`). Any other shape holds nothing. */
int entra_claims_array_has(const json_t *claims, const char *name, const char *const *values,
                           int n, int nocase);

/* True when the token is in groups overage: `_claim_names` names `groups`, or `hasgroups`
 * is true. Such a token lists no (or not all) groups. */
int entra_claims_groups_overage(const json_t *claims);

/* Membership in any of the groups `ids` (object ids, case-insensitive); overage first. */
entra_member entra_claims_in_groups(const json_t *claims, const char *const *ids, int n);

/* True when `xms_cc` (client capabilities) holds "cp1": the client answers claims
 * challenges. */
int entra_claims_client_cp1(const json_t *claims);

/* The `claims` parameter of an insufficient_claims challenge asking for authentication
 * context `acrs`: standard base64 (with padding) of
 * {"access_token":{"acrs":{"essential":true,"value":"<acrs>"}}}. */
const char *entra_claims_acrs_challenge(apr_pool_t *p, const char *acrs);

#endif
