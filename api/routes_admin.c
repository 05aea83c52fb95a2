/* api/routes_admin.c: tenants and API keys, for admin-role keys only. To any other key these routes
 * do not exist (404), like everything else it cannot see.
 *
 * An admin key manages its own tenant and the tenants its tenant created (tenants.parent_id). A new
 * key is made here from the kernel's generator, returned once, and stored only as its SHA-256. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "engine/mem.h"
#include "engine/rand.h"

bool api_call_admin_only(api_call *call)
{
    if (call->admin)
        return true;
    api_call_respond_error(call, 404, "not_found", "no such route", NULL);
    return false;
}

/* Tenant names: 1 to 63 of [A-Za-z0-9._-], starting with a letter or digit (they appear in CLI
 * arguments, logs and metrics labels). */
static bool admin_valid_name(const char *s, size_t len)
{
    if (len == 0 || len > 63 || !isalnum((unsigned char)s[0]))
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._-", s[i]))
            return false;
    return true;
}

/* ------------------------------------------------------------------------------ tenants -- */

static void tenant_post_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err && err->rc == ENG_ECONFLICT) {
        api_call_respond_error(call, 409, "conflict", "a tenant with this name exists", "/name");
        return;
    }
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 201, res, "tenant");
}

void api_route_tenant_post(api_call *call)
{
    static const char *const allowed[] = {"name", "max_running", "priority_limit", NULL};
    if (!api_call_admin_only(call))
        return;
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    const json_t *name = json_object_get(body, "name");
    const json_t *max_running = json_object_get(body, "max_running");
    const json_t *plimit = json_object_get(body, "priority_limit");
    const char *field = NULL, *msg = NULL;
    if (!json_is_string(name) ||
        !admin_valid_name(json_string_value(name), json_string_length(name)))
        field = "/name", msg = "must be 1 to 63 letters, digits, '.', '_' or '-'";
    else if (max_running && !json_is_null(max_running) &&
             (!json_is_integer(max_running) || json_integer_value(max_running) < 1 ||
              json_integer_value(max_running) > 1000000))
        field = "/max_running", msg = "must be an integer from 1 to 1000000, or null";
    else if (plimit && (!json_is_integer(plimit) || json_integer_value(plimit) < 0 ||
                        json_integer_value(plimit) > 1000))
        field = "/priority_limit", msg = "must be an integer from 0 to 1000";
    if (field) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", msg, field);
        return;
    }
    char max_s[24], plimit_s[24];
    snprintf(max_s, sizeof max_s, "%lld", (long long)json_integer_value(max_running));
    snprintf(plimit_s, sizeof plimit_s, "%lld", (long long)json_integer_value(plimit));
    const char *params[] = {call->tenant_s, json_string_value(name),
                            json_is_integer(max_running) ? max_s : NULL, plimit ? plimit_s : NULL};
    api_call_db(call, "SELECT flowd_create_tenant($1, $2, $3, $4::integer)", 4, params,
                tenant_post_cb);
    json_decref(body);
}

/* --------------------------------------------------------------------------------- keys -- */

static void key_post_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQgetisnull(res, 0, 0)) {
        api_call_respond_error(call, 404, "not_found", "tenant not found", "/tenant");
        return;
    }
    api_call_respond_row_json(call, 201, res, "key");
}

void api_route_key_post(api_call *call)
{
    static const char *const allowed[] = {"tenant", "role", NULL};
    if (!api_call_admin_only(call))
        return;
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    const json_t *tenant = json_object_get(body, "tenant");
    const json_t *role = json_object_get(body, "role");
    const char *field = NULL, *msg = NULL;
    if (tenant && !json_is_null(tenant) &&
        !(json_is_integer(tenant) && json_integer_value(tenant) > 0) &&
        !(json_is_string(tenant) && json_string_length(tenant) > 0))
        field = "/tenant", msg = "must be a tenant name or id";
    else if (role && !json_is_null(role) &&
             (!json_is_string(role) || (strcmp(json_string_value(role), "admin") != 0 &&
                                        strcmp(json_string_value(role), "member") != 0)))
        field = "/role", msg = "must be \"admin\" or \"member\"";
    if (field) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", msg, field);
        return;
    }
    char key[ENG_API_KEY_SIZE];
    eng_err err;
    if (eng_rand_api_key(key, &err) != ENG_OK) {
        json_decref(body);
        api_call_respond_err(call, &err);
        return;
    }
    char id_s[24];
    snprintf(id_s, sizeof id_s, "%lld", (long long)json_integer_value(tenant));
    const char *params[] = {call->tenant_s, json_is_integer(tenant) ? id_s : NULL,
                            json_string_value(tenant),
                            json_is_string(role) ? json_string_value(role) : "member", key};
    api_call_db(call, "SELECT flowd_create_key($1, $2, $3, $4, $5)", 5, params, key_post_cb);
    memset(key, 0, sizeof key);
    json_decref(body);
}

static void key_delete_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQgetvalue(res, 0, 0)[0] != 't') {
        api_call_respond_error(call, 404, "not_found", "key not found", NULL);
        return;
    }
    api_call_respond_raw(call, 204, NULL, NULL, 0, NULL);
}

void api_route_key_delete(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    char *end;
    long long id = strtoll(call->params[0], &end, 10);
    if (*end || id <= 0) {
        api_call_respond_error(call, 404, "not_found", "key not found", NULL);
        return;
    }
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_revoke_key($1, $2)", 2, params, key_delete_cb);
}

/* ------------------------------------------------------------------------------- quotas -- */

/* PUT /v1/tenants/{name}/quotas {"runs_per_month", "llm_tokens_per_month",
 * "llm_cost_usd_per_month", "sends_per_day": N | null}: the quotas named are set (null: no limit),
 * the others keep theirs; by the admin key of the tenant that created it, or of "default" (a
 * tenant cannot raise its own). GET: also the tenant's own admin key. Both answer the quotas with
 * what is used and when it resets; 404 for a tenant the key cannot see (or set). */
static void quotas_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "tenant");
}

void api_route_quotas_get(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_quotas_json($1, $2)", 2, params, quotas_cb);
}

void api_route_quotas_put(api_call *call)
{
    static const char *const allowed[] = {"runs_per_month", "llm_tokens_per_month",
                                          "llm_cost_usd_per_month", "sends_per_day", NULL};
    if (!api_call_admin_only(call))
        return;
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    const char *name;
    const json_t *v;
    json_object_foreach (body, name, v) {
        bool money = strcmp(name, "llm_cost_usd_per_month") == 0;
        if (json_is_null(v) || (json_is_integer(v) && json_integer_value(v) >= 0) ||
            (money && json_is_real(v) && json_real_value(v) >= 0))
            continue;
        char field[64];
        snprintf(field, sizeof field, "/%s", name);
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request",
                               money ? "must be a non-negative number of USD, or null for no limit"
                                     : "must be a non-negative integer, or null for no limit",
                               field);
        return;
    }
    char *quotas = json_dumps(body, JSON_COMPACT);
    const char *params[] = {call->tenant_s, call->params[0], quotas};
    api_call_db(call, "SELECT flowd_quotas_put($1, $2, $3::jsonb)", 3, params, quotas_cb);
    free(quotas);
    json_decref(body);
}
