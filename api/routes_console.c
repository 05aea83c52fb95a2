/* api/routes_console.c: the browser console: its embedded files (api/console.h) at / and
 * /console/NAME, and its sign-in sessions.
 *
 * Signing in (POST /v1/console/session {"key"}) trades an API key, sent once in a request body
 * and never kept by the page, for a session: a random token in an HttpOnly, SameSite=Strict cookie
 * (script cannot read it, other sites cannot send it) and a CSRF value the page sends back in
 * X-CSRF-Token with every request that changes something (api/service.c checks both). The cookie
 * carries no expiry, so it ends with the browser session, and the server ends it after
 * API_SESSION_TTL_S in any case. Only the token's SHA-256 is stored (console_sessions).
 *
 * Every console file is sent with a Content-Security-Policy that allows scripts, styles and
 * requests from this origin only (no inline script, no eval), and refuses framing; the page
 * renders every value it shows as text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "api/api_int.h"
#include "api/console.h"
#include "engine/mem.h"
#include "engine/wf_def.h"

#define API_SESSION_TTL_S 43200 /* 12 hours */

static const char *const console_headers[] = {
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Frame-Options: DENY",
    "X-Content-Type-Options: nosniff",
    "Referrer-Policy: no-referrer",
    "Cache-Control: no-cache",
    NULL};

static void console_send(api_call *call, const char *name)
{
    size_t n;
    const api_console_file *files = api_console_files(&n);
    for (size_t i = 0; i < n; i++)
        if (strcmp(files[i].name, name) == 0) {
            api_call_respond_raw(call, 200, files[i].content_type, files[i].data, files[i].len,
                                 console_headers);
            return;
        }
    api_call_respond_error(call, 404, "not_found", "no such file", NULL);
}

void api_route_console_index(api_call *call)
{
    console_send(call, "index.html");
}

void api_route_console_file(api_call *call)
{
    console_send(call, call->params[0]);
}

/* n random bytes as 2n lowercase hex digits and a NUL; false when the kernel gives none. */
static bool console_random_hex(char *out, size_t n)
{
    unsigned char raw[32];
    if (n > sizeof raw || getrandom(raw, n, 0) != (ssize_t)n)
        return false;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[2 * n] = '\0';
    return true;
}

typedef struct console_signin {
    char token[65];
    char csrf[33];
} console_signin;

/* Cookies get Secure when clients reach flowd over HTTPS (FLOWD_PUBLIC_URL names a TLS proxy). */
static bool console_secure_cookies(void)
{
    const char *pub = getenv("FLOWD_PUBLIC_URL");
    return pub && strncasecmp(pub, "https://", 8) == 0;
}

static void session_open_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    console_signin *si = call->data;
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQntuples(res) == 0) {
        api_call_respond_error(call, 401, "unauthorized", "unknown or revoked API key", "/key");
        return;
    }
    char cookie[160];
    snprintf(cookie, sizeof cookie,
             "Set-Cookie: " API_SESSION_COOKIE "=%s; Path=/; HttpOnly; SameSite=Strict%s",
             si->token, console_secure_cookies() ? "; Secure" : "");
    const char *headers[] = {cookie, "Cache-Control: no-store", NULL};
    json_t *body = json_pack("{s:I, s:s, s:s, s:s}", "tenant",
                             (json_int_t)strtoll(PQgetvalue(res, 0, 0), NULL, 10), "role",
                             PQgetvalue(res, 0, 1), "csrf", si->csrf, "expires_at",
                             PQgetvalue(res, 0, 2));
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    api_call_respond_raw(call, 201, "application/json", text, strlen(text), headers);
    free(text);
}

/* POST /v1/console/session {"key"}: open route (the key is the credential being checked). */
void api_route_console_session_post(api_call *call)
{
    static const char *const allowed[] = {"key", NULL};
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    const json_t *key = json_object_get(body, "key");
    if (!json_is_string(key) || json_string_length(key) == 0 || json_string_length(key) > 200) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", "must be an API key", "/key");
        return;
    }
    console_signin *si = eng_xcalloc(1, sizeof *si);
    if (!console_random_hex(si->token, 32) || !console_random_hex(si->csrf, 16)) {
        free(si);
        json_decref(body);
        api_call_respond_error(call, 500, "internal", "internal error", NULL);
        return;
    }
    char *key_hash = wf_sha256_hex(json_string_value(key), json_string_length(key));
    char *token_hash = wf_sha256_hex(si->token, strlen(si->token));
    json_decref(body);
    call->data = si;
    call->data_free = free;
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", API_SESSION_TTL_S);
    const char *params[] = {key_hash, token_hash, si->csrf, ttl};
    api_call_db(call,
                "SELECT tenant_id, role, flowd_ms(expires_at) FROM flowd_console_session_open("
                "decode($1, 'hex'), decode($2, 'hex'), $3, $4)",
                4, params, session_open_cb);
    free(key_hash);
    free(token_hash);
}

/* GET /v1/console/session: who the caller is; the CSRF value when it came with a session cookie
 * (a page reloaded in its tab asks for it again). */
void api_route_console_session_get(api_call *call)
{
    json_t *body = json_pack("{s:I, s:s}", "tenant", (json_int_t)call->tenant, "role",
                             call->admin ? "admin" : "member");
    if (call->csrf[0])
        json_object_set_new(body, "csrf", json_string(call->csrf));
    api_call_respond_json(call, 200, body);
}

static void session_delete_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    (void)res;
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    static const char *const headers[] = {
        "Set-Cookie: " API_SESSION_COOKIE "=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        NULL};
    api_call_respond_raw(call, 204, NULL, "", 0, headers);
}

/* DELETE /v1/console/session: signs out (only a session can: a bearer key has none to end). */
void api_route_console_session_delete(api_call *call)
{
    const char *token = api_call_session_token(call);
    if (!token) {
        api_call_respond_error(call, 404, "not_found", "no session to end", NULL);
        return;
    }
    char *token_hash = wf_sha256_hex(token, strlen(token));
    const char *params[] = {token_hash};
    api_call_db(call, "DELETE FROM console_sessions WHERE token_hash = decode($1, 'hex')", 1,
                params, session_delete_cb);
    free(token_hash);
}
