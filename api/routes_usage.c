/* api/routes_usage.c: GET /v1/usage — the tenant's LLM tokens, messages and their cost, summed.
 *
 *   ?from=YYYY-MM-DD&to=YYYY-MM-DD  UTC days of the engine clock, both included (default: to
 *                                   today, from the first day of to's month)
 *   ?group_by=day|workflow|model|provider|channel|run  (default day); run lists the runs that
 *                                   cost most (?limit, default 100, at most 10,000)
 *   ?format=json|csv
 *
 * Sums come from the rollups written with the usage (usage_daily, run_usage: 0032_usage.sql), so a
 * month costs a read of at most (days x workflows x models) rows, however many calls it had. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "api/csv.h"
#include "engine/buf.h"

#define USAGE_RUNS_DEFAULT "100"
#define USAGE_RUNS_MAX     10000

static const char *const usage_groups[] = {"day",     "workflow", "model",
                                           "provider", "channel", "run"};

/* A calendar date written YYYY-MM-DD (year 1970..9999). */
static bool usage_date_ok(const char *s)
{
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return false;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9'))
            return false;
    int y = atoi(s), m = atoi(s + 5), d = atoi(s + 8);
    if (y < 1970 || m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
        return false;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return !(m == 2 && d == 29 && !leap);
}

/* Numeric text as the shortest decimal: "0.01230000" -> "0.0123", "2.00000000" -> "2". */
static const char *usage_trim(const char *s, char *buf, size_t size)
{
    snprintf(buf, size, "%s", s);
    if (!strchr(buf, '.'))
        return buf;
    char *end = buf + strlen(buf);
    while (end > buf && end[-1] == '0')
        *--end = '\0';
    if (end > buf && end[-1] == '.')
        end[-1] = '\0';
    return buf;
}

/* Columns of flowd_usage after the key, and their CSV names. */
static const char *const usage_csv_cols[] = {
    "llm_calls", "input_tokens", "output_tokens", "cached_input_tokens", "llm_cost_usd",
    "messages",  "segments",     "send_cost_usd"};

static void usage_csv_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    const char *group = call->data;
    eng_buf out;
    eng_buf_init(&out, 0);
    eng_rc rc = api_csv_field(&out, group, false);
    for (size_t c = 0; rc == ENG_OK && c < ENG_ARRAY_LEN(usage_csv_cols); c++)
        rc = api_csv_field(&out, usage_csv_cols[c], false);
    if (rc == ENG_OK)
        rc = api_csv_field(&out, "cost_usd", true);
    for (int i = 0; rc == ENG_OK && i < PQntuples(res); i++) {
        char num[64];
        rc = api_csv_field(&out, PQgetvalue(res, i, 0), false);
        for (int c = 1; rc == ENG_OK && c <= (int)ENG_ARRAY_LEN(usage_csv_cols); c++)
            rc = api_csv_field(&out, usage_trim(PQgetvalue(res, i, c), num, sizeof num), false);
        if (rc == ENG_OK)
            rc = api_csv_field(&out, usage_trim(PQgetvalue(res, i, 9), num, sizeof num), true);
    }
    if (rc != ENG_OK) { /* the buffer is uncapped: only a broken invariant gets here */
        eng_buf_deinit(&out);
        api_call_respond_error(call, 500, "internal", "internal error", NULL);
        return;
    }
    static const char *const headers[] = {
        "Content-Disposition: attachment; filename=\"usage.csv\"", NULL};
    api_call_respond_raw(call, 200, "text/csv; charset=utf-8", out.ptr ? out.ptr : "", out.len,
                         headers);
    eng_buf_deinit(&out);
}

static void usage_json_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "usage");
}

void api_route_usage(api_call *call)
{
    const char *from = api_req_query(call->req, "from");
    const char *to = api_req_query(call->req, "to");
    const char *group = api_req_query(call->req, "group_by");
    const char *format = api_req_query(call->req, "format");
    const char *limit = api_req_query(call->req, "limit");
    const char *field = NULL, *msg = NULL;
    const char *g = NULL;
    for (size_t i = 0; i < ENG_ARRAY_LEN(usage_groups); i++)
        if (!group || strcmp(group, usage_groups[i]) == 0) {
            g = usage_groups[i];
            break;
        }
    char *end = NULL;
    long n = limit ? strtol(limit, &end, 10) : 0;
    if (from && !usage_date_ok(from))
        field = "?from", msg = "must be a date (YYYY-MM-DD)";
    else if (to && !usage_date_ok(to))
        field = "?to", msg = "must be a date (YYYY-MM-DD)";
    else if (from && to && strcmp(from, to) > 0) /* same layout: text order is date order */
        field = "?to", msg = "must not be before from";
    else if (!g)
        field = "?group_by", msg = "must be day, workflow, model, provider, channel or run";
    else if (format && strcmp(format, "json") != 0 && strcmp(format, "csv") != 0)
        field = "?format", msg = "must be json or csv";
    else if (limit && strcmp(g, "run") != 0)
        field = "?limit", msg = "applies to group_by=run only";
    else if (limit && (!*limit || *end || n < 1 || n > USAGE_RUNS_MAX))
        field = "?limit", msg = "must be an integer from 1 to 10000";
    if (field) {
        api_call_respond_error(call, 400, "invalid_request", msg, field);
        return;
    }
    call->data = (void *)g; /* static storage: nothing to free */
    const char *params[] = {call->tenant_s, from, to, g, limit ? limit : USAGE_RUNS_DEFAULT};
    if (format && strcmp(format, "csv") == 0)
        api_call_db(call,
                    "SELECT u.* FROM flowd_usage_range($2::date, $3::date) r,"
                    " LATERAL flowd_usage($1, r.from_day, r.to_day, $4, $5::integer) u",
                    5, params, usage_csv_cb);
    else
        api_call_db(call, "SELECT flowd_usage_report($1, $2::date, $3::date, $4, $5::integer)", 5,
                    params, usage_json_cb);
}

/* --------------------------------------------------------------------------------- prices -- */

/* PUT /v1/prices (admin): a tenant's price for an LLM model (or a prefix of model names) or a
 * message channel, in effect from effective_from (default now; never in the past, so what was
 * recorded keeps the price it was recorded with):
 *   {model, provider?, input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok?,
 *    effective_from?}  |  {channel: email|sms|whatsapp, provider?, usd_per_message, effective_from?}
 * (usd_per_message is per segment for SMS). GET /v1/prices lists the shipped defaults and the
 * tenant's own prices. */

#define PRICE_MAX 1e6 /* USD per million tokens or per message: far above any list price */

/* Reads an optional non-negative number into out ("" when absent). NULL when fine, else why. */
static const char *price_number(const json_t *body, const char *name, char out[32])
{
    const json_t *v = json_object_get(body, name);
    out[0] = '\0';
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_number(v) || !(json_number_value(v) >= 0) || json_number_value(v) > PRICE_MAX)
        return "must be a number from 0 to 1000000";
    snprintf(out, 32, "%.17g", json_number_value(v));
    return NULL;
}

/* "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" (UTC). */
static bool price_time_ok(const char *s)
{
    char day[11];
    snprintf(day, sizeof day, "%s", s);
    if (!usage_date_ok(day))
        return false;
    s += 10;
    if (!*s)
        return true;
    if (strlen(s) < 10 || s[0] != 'T' || s[3] != ':' || s[6] != ':')
        return false;
    for (int i = 1; i < 9; i++)
        if (i != 3 && i != 6 && (s[i] < '0' || s[i] > '9'))
            return false;
    if (atoi(s + 1) > 23 || atoi(s + 4) > 59 || atoi(s + 7) > 59)
        return false;
    s += 9;
    if (*s == '.') {
        int n = 0;
        for (s++; *s >= '0' && *s <= '9'; s++)
            n++;
        if (n < 1 || n > 6)
            return false;
    }
    return strcmp(s, "Z") == 0;
}

static void price_put_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 201, res, "price");
}

/* The first problem of a PUT /v1/prices body, or NULL; *field names it. */
static const char *price_check(const json_t *body, const char **field, char num[4][32])
{
    const json_t *model = json_object_get(body, "model");
    const json_t *channel = json_object_get(body, "channel");
    const json_t *provider = json_object_get(body, "provider");
    const json_t *from = json_object_get(body, "effective_from");
    const char *msg;
    static const char *const nums[] = {"input_usd_per_mtok", "output_usd_per_mtok",
                                       "cached_input_usd_per_mtok", "usd_per_message"};
    static const char *const ptrs[] = {"/input_usd_per_mtok", "/output_usd_per_mtok",
                                       "/cached_input_usd_per_mtok", "/usd_per_message"};
    for (int i = 0; i < 4; i++)
        if ((msg = price_number(body, nums[i], num[i]))) {
            *field = ptrs[i];
            return msg;
        }
    *field = "/model";
    if (!model == !channel)
        return "give either model or channel";
    if (model && (!json_is_string(model) || !*json_string_value(model) ||
                  json_string_length(model) > 200))
        return "must be a model name (or a prefix of model names), 1 to 200 characters";
    if (model && *num[3]) {
        *field = ptrs[3];
        return "applies to a channel, not a model";
    }
    for (int i = 0; model && i < 2; i++)
        if (!*num[i]) {
            *field = ptrs[i];
            return "is required with model";
        }
    *field = "/channel";
    const char *ch = json_string_value(channel);
    if (channel && (!ch || (strcmp(ch, "email") != 0 && strcmp(ch, "sms") != 0 &&
                            strcmp(ch, "whatsapp") != 0)))
        return "must be email, sms or whatsapp";
    for (int i = 0; channel && i < 3; i++)
        if (*num[i]) {
            *field = ptrs[i];
            return "applies to a model, not a channel";
        }
    if (channel && !*num[3]) {
        *field = ptrs[3];
        return "is required with channel";
    }
    *field = "/provider";
    if (provider && !json_is_null(provider) &&
        (!json_is_string(provider) || !*json_string_value(provider) ||
         json_string_length(provider) > 64))
        return "must be a provider name";
    *field = "/effective_from";
    if (from && !json_is_null(from) &&
        (!json_is_string(from) || !price_time_ok(json_string_value(from))))
        return "must be a UTC time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)";
    return NULL;
}

void api_route_price_put(api_call *call)
{
    static const char *const allowed[] = {"model",
                                          "channel",
                                          "provider",
                                          "input_usd_per_mtok",
                                          "output_usd_per_mtok",
                                          "cached_input_usd_per_mtok",
                                          "usd_per_message",
                                          "effective_from",
                                          NULL};
    if (!api_call_admin_only(call))
        return;
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    char num[4][32];
    const char *field = NULL;
    const char *msg = price_check(body, &field, num);
    if (msg) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", msg, field);
        return;
    }
    const json_t *model = json_object_get(body, "model");
    const char *params[] = {
        call->tenant_s,
        model ? "llm" : "send",
        json_string_value(model ? model : json_object_get(body, "channel")),
        json_string_value(json_object_get(body, "provider")),
        *num[0] ? num[0] : NULL,
        *num[1] ? num[1] : NULL,
        *num[2] ? num[2] : NULL,
        *num[3] ? num[3] : NULL,
        json_string_value(json_object_get(body, "effective_from")),
    };
    api_call_db(call,
                "SELECT flowd_price_put($1, $2, $3, $4, $5::numeric, $6::numeric, $7::numeric,"
                " $8::numeric, $9::timestamptz)",
                9, params, price_put_cb);
    json_decref(body);
}

static void prices_list_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "prices");
}

void api_route_prices_list(api_call *call)
{
    const char *params[] = {call->tenant_s};
    api_call_db(call, "SELECT flowd_prices_json($1)", 1, params, prices_list_cb);
}
