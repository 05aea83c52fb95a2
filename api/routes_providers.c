/* api/routes_providers.c: a tenant's provider settings (steps/provider.h), for admin-role keys.
 *
 *   PUT    /v1/providers/{provider}  {field: "value", ...}  replaces the tenant's settings
 *   GET    /v1/providers                                    every provider the tenant configured
 *   DELETE /v1/providers/{provider}
 *
 * Secret fields (prov_field_secret) are sealed under the operator's key before they reach the
 * database (engine/secret.h) and are shown only masked ("****" and the last 4 characters); without
 * a key a PUT carrying a secret is refused. Other fields (base_url, from, account ids) are stored
 * and shown as given. Responses never hold a secret in full, and nothing here logs a value.
 *
 * Writes clear this process's settings cache; other processes see them within PROV_CONFIG_TTL_MS. */
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "engine/mem.h"
#include "engine/secret.h"
#include "steps/provider.h"

#define PROVIDER_VALUE_MAX 4096

/* The fields a tenant may set per provider, NULL-terminated. */
static const char *const *provider_fields(prov_id id)
{
    static const char *const llm[] = {"api_key", "base_url", NULL};
    static const char *const sendgrid[] = {"api_key", "base_url", "from", "webhook_public_key",
                                           NULL};
    static const char *const twilio[] = {"account_sid", "auth_token", "from",
                                         "messaging_service_sid", "base_url", NULL};
    static const char *const whatsapp[] = {"token", "phone_number_id", "app_secret",
                                           "verify_token", "base_url", NULL};
    switch (id) {
    case PROV_OPENAI:
    case PROV_ANTHROPIC:
    case PROV_OPENAI_COMPATIBLE:
        return llm;
    case PROV_SENDGRID:
        return sendgrid;
    case PROV_TWILIO:
        return twilio;
    case PROV_WHATSAPP:
        return whatsapp;
    default:
        return NULL;
    }
}

/* The provider named in the path, or false after answering 422. */
static bool provider_param(api_call *call, prov_id *id)
{
    if (prov_from_name(call->params[0], id) && provider_fields(*id))
        return true;
    api_call_respond_error(call, 422, "invalid_request",
                           "must be one of openai, anthropic, openai_compatible, sendgrid, twilio, "
                           "whatsapp",
                           "provider");
    return false;
}

/* Why value cannot be stored as field, or NULL when it can. */
static const char *value_problem(const char *field, const json_t *v)
{
    if (!json_is_string(v))
        return "must be a string";
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n == 0 || n > PROVIDER_VALUE_MAX)
        return "must be 1 to 4096 characters";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < ' ' || s[i] == 0x7f)
            return "must not contain control characters";
    if (strcmp(field, "base_url") == 0 && strncmp(s, "https://", 8) != 0 &&
        strncmp(s, "http://", 7) != 0)
        return "must be an http:// or https:// URL";
    return NULL;
}

/* The settings as a response shows them: secrets masked. stored is the row's object. */
static json_t *settings_view(const json_t *stored)
{
    json_t *out = json_object();
    const char *k;
    const json_t *v;
    json_object_foreach ((json_t *)stored, k, v) {
        const char *s = json_string_value(v);
        if (!s)
            continue;
        if (!prov_field_secret(k) && !sec_is_sealed(s)) {
            json_object_set_new(out, k, json_string(s));
            continue;
        }
        /* a value this process cannot open is still shown as present */
        char *plain = sec_open(s, NULL);
        char *mask = sec_mask(plain ? plain : "");
        sec_free(plain);
        json_object_set_new(out, k, json_string(mask));
        free(mask);
    }
    return out;
}

static json_t *provider_view(const char *provider, const char *settings_text, const char *updated)
{
    json_t *stored = json_loads(settings_text, 0, NULL);
    json_t *view = json_pack("{s:s, s:o, s:s}", "provider", provider, "settings",
                             settings_view(stored), "updated_at", updated);
    json_decref(stored);
    return view;
}

static void provider_put_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    prov_config_cache_clear();
    bool created = PQgetvalue(res, 0, 0)[0] == 't';
    api_call_respond_json(call, created ? 201 : 200,
                          provider_view(call->params[0], PQgetvalue(res, 0, 1),
                                        PQgetvalue(res, 0, 2)));
}

void api_route_provider_put(api_call *call)
{
    prov_id id;
    if (!api_call_admin_only(call) || !provider_param(call, &id))
        return;
    json_t *body = api_call_body_fields(call, provider_fields(id));
    if (!body)
        return;
    if (json_object_size(body) == 0) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request",
                               "names no setting (DELETE removes a provider's settings)", "");
        return;
    }
    json_t *stored = json_object();
    const char *k;
    json_t *v;
    char field[128];
    const char *msg = NULL;
    eng_err serr = {0};
    json_object_foreach (body, k, v) {
        snprintf(field, sizeof field, "/%.120s", k);
        if ((msg = value_problem(k, v)))
            break;
        if (!prov_field_secret(k)) {
            json_object_set(stored, k, v);
            continue;
        }
        char *sealed = sec_seal(json_string_value(v), &serr);
        if (!sealed) {
            msg = serr.msg;
            break;
        }
        json_object_set_new(stored, k, json_string(sealed));
        free(sealed);
    }
    json_decref(body);
    if (msg) {
        json_decref(stored);
        if (serr.rc != ENG_OK)
            api_call_respond_error(call, 409, "secret_key_missing", msg, field);
        else
            api_call_respond_error(call, 422, "invalid_request", msg, field);
        return;
    }
    char *text = json_dumps(stored, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(stored);
    const char *params[] = {call->tenant_s, call->params[0], text};
    api_call_db(call,
                "INSERT INTO provider_settings (tenant_id, provider, settings)"
                " VALUES ($1, $2, $3::jsonb)"
                " ON CONFLICT (tenant_id, provider)"
                " DO UPDATE SET settings = EXCLUDED.settings, updated_at = now()"
                " RETURNING xmax = 0, settings::text, to_json(updated_at)#>>'{}'",
                3, params, provider_put_cb);
    free(text);
}

static void providers_list_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    json_t *list = json_array();
    for (int i = 0; i < PQntuples(res); i++)
        json_array_append_new(list, provider_view(PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                                                  PQgetvalue(res, i, 2)));
    api_call_respond_json(call, 200, json_pack("{s:o}", "providers", list));
}

void api_route_providers_list(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    const char *params[] = {call->tenant_s};
    api_call_db(call,
                "SELECT provider, settings::text, to_json(updated_at)#>>'{}'"
                " FROM provider_settings WHERE tenant_id = $1 ORDER BY provider",
                1, params, providers_list_cb);
}

static void provider_delete_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQntuples(res) == 0) {
        api_call_respond_error(call, 404, "not_found", "provider settings not found", NULL);
        return;
    }
    prov_config_cache_clear();
    api_call_respond_raw(call, 204, NULL, NULL, 0, NULL);
}

void api_route_provider_delete(api_call *call)
{
    prov_id id;
    if (!api_call_admin_only(call) || !provider_param(call, &id))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call,
                "DELETE FROM provider_settings WHERE tenant_id = $1 AND provider = $2"
                " RETURNING provider",
                2, params, provider_delete_cb);
}
