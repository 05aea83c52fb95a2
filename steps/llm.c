/* steps/llm.c: the `llm` step kind.
 *
 *   input  {provider?: "openai" | "anthropic" | "openai_compatible" | "sandbox" (default openai),
 *           model, system?, prompt | messages: [{role, content}], max_tokens?, temperature?,
 *           json?: true, json_schema?: {...}, stream?: bool, base_url? (openai_compatible only),
 *           fallback?: [{provider, model}], attempts_per_provider? (default 2),
 *           rate_limit? (name in rate_limits; default the provider's name)}
 *   output {text, json?, provider, model, finish_reason, usage: {input_tokens, output_tokens,
 *           cached_input_tokens?}, cost_usd?, latency_ms, fallback?: true}
 *
 * One attempt is a small state machine (llm_state). Before calling, the attempt looks for an
 * answer recorded under (run, step, item) — never the attempt — with the same request hash: a step
 * re-run after a crash returns that answer instead of paying twice. Then it asks the tenant's
 * token and cost quotas (steps/quota.h: no room blocks the step), loads the provider's
 * settings (steps/provider.h; no credential = sandbox), takes budget from the shared rate limits
 * (snoozing without spending an attempt when there is none), calls, records the answer and only
 * then reports success.
 *
 * Fallback: attempt n is served by target (n-1) / attempts_per_provider of [primary, fallback...]
 * (the last one keeps the remaining attempts), so the primary gets its retries first and a
 * retryable failure moves on to the fallback; a permanent failure (bad key, unknown model,
 * insufficient_quota) fails the step at once. With json/json_schema a reply that is not JSON (or
 * does not match the schema, checked recursively by engine/jschema) is a retryable failure.
 *
 * finish_reason is normalized to "stop" and "length" (Anthropic end_turn/stop_sequence and
 * max_tokens); other values pass through.
 *
 * This file is the attempt driver. The rest of the kind: llm_input (validation, reading the
 * input), llm_wire (the OpenAI and Anthropic request bodies and responses, plain and streamed),
 * llm_answer (the output, prices, JSON answers), llm_sandbox (the sandbox provider), llm_batch
 * (recorded answers, looked up and written in batches per connection). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/clock.h"
#include "engine/db.h"
#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/step.h"
#include "engine/wf_def.h"
#include "steps/inputs.h"
#include "steps/llm_answer.h"
#include "steps/llm_batch.h"
#include "steps/llm_input.h"
#include "steps/llm_sandbox.h"
#include "steps/llm_wire.h"
#include "steps/provider.h"
#include "steps/quota.h"
#include "steps/ratelimit.h"
#include "steps/steps.h"

#define LLM_DEFAULT_TIMEOUT_MS 120000L
#define LLM_ATTEMPTS_PER_PROVIDER 2
#define LLM_DB_RETRY_MS 1000 /* an attempt the database interrupted before the call runs again */
#define LLM_SANDBOX (-1) /* target provider "sandbox": never leaves the process */

/* ------------------------------------------------------------------------------ the attempt -- */

typedef enum llm_state {
    LLM_LOOKUP, /* asking llm_records for a recorded answer (db query in flight) */
    LLM_QUOTA,  /* asking the tenant's quotas (quota_check pending) */
    LLM_CONFIG, /* loading the target provider's settings (prov_load pending) */
    LLM_BUDGET, /* asking the shared rate limits (rl_take pending) */
    LLM_CALL,   /* the provider call is in flight */
    LLM_RECORD, /* writing the answer to llm_records (db query in flight) */
} llm_state;

typedef struct llm_attempt {
    eng_step_ctx *ctx;  /* NULL once cancelled: a pending db callback then only frees */
    llm_state st;
    const json_t *in;   /* rendered input, borrowed from ctx (dead once cancelled) */
    int prov;           /* prov_id, or LLM_SANDBOX */
    const char *model;  /* borrowed from in */
    bool is_fallback;
    bool next_is_other; /* the next attempt goes to another target */
    char *hash;         /* request hash for the record */
    char *rl_name;
    prov_config *cfg;
    prov_load *load;
    quota_check *quota;
    rl_take *take;
    eng_http_call *call;
    int64_t est_tokens; /* reserved from the token budget */
    int64_t t0_wall_ms;
    json_t *output;     /* the answer while it is being recorded */
    llm_batch_item batch; /* its lookup or record, while in LLM_LOOKUP or LLM_RECORD */
} llm_attempt;

static void attempt_free(llm_attempt *a)
{
    free(a->hash);
    free(a->rl_name);
    prov_config_free(a->cfg);
    json_decref(a->output);
    free(a);
}

/* Ends the attempt: detaches from ctx and frees. The outcome is reported by the caller after. */
static eng_step_ctx *attempt_end(llm_attempt *a)
{
    eng_step_ctx *ctx = a->ctx;
    eng_step_set_data(ctx, NULL);
    attempt_free(a);
    return ctx;
}

static void attempt_fail(llm_attempt *a, bool permanent, const char *code, const char *msg,
                         int64_t after_ms)
{
    if (a->st >= LLM_CALL && a->est_tokens > 0) /* give back the unused reservation */
        rl_adjust(eng_step_db(a->ctx), eng_step_tenant_id(a->ctx), a->rl_name, -a->est_tokens);
    if (!permanent && a->next_is_other)
        after_ms = 0; /* the provider's retry-after does not concern the next target */
    eng_step_ctx *ctx = attempt_end(a);
    eng_step_fail(ctx, permanent, code, msg, after_ms);
}

/* ------------------------------------------------------------------------------ the driver -- */

static void record_result(llm_batch_item *it, const eng_err *err, json_t *found)
{
    (void)found;
    llm_attempt *a = ENG_CONTAINER_OF(it, llm_attempt, batch);
    if (!a->ctx) { /* cancelled while recording: the record stays for the next attempt */
        attempt_free(a);
        return;
    }
    if (err) {
        attempt_fail(a, false, "db_error", "could not record the answer", 0);
        return;
    }
    json_t *out = a->output;
    a->output = NULL;
    /* counted once recorded, at the cost usage recorded (the tenant's prices) */
    const char *provider = json_string_value(json_object_get(out, "provider"));
    const json_t *usage = json_object_get(out, "usage");
    if (provider && strcmp(provider, "sandbox") != 0)
        eng_metrics_llm_usage(
            provider, json_string_value(json_object_get(out, "model")),
            json_integer_value(json_object_get(usage, "input_tokens")),
            json_integer_value(json_object_get(usage, "output_tokens")),
            json_integer_value(json_object_get(usage, "cached_input_tokens")), it->cost_usd);
    eng_step_ctx *ctx = attempt_end(a);
    eng_step_succeed(ctx, out);
}

/* Fills the attempt's batch item with its key (what it points at outlives its batch: a cancel
 * withdraws a waiting item). */
static llm_batch_item *batch_item(llm_attempt *a, llm_batch_cb *done)
{
    a->batch = (llm_batch_item){.tenant = eng_step_tenant_id(a->ctx),
                                .run = eng_step_run_id(a->ctx), .step = eng_step_key(a->ctx),
                                .hash = a->hash, .output = a->output, .done = done};
    return &a->batch;
}

/* Records out (stolen) under the attempt's key, then succeeds with it. */
static void finish_with(llm_attempt *a, json_t *out)
{
    a->st = LLM_RECORD;
    a->output = out;
    llm_batch_record(eng_step_db(a->ctx), batch_item(a, record_result));
}

/* The statement answers the cost usage recorded with what the call used (the query's own
 * parameters), so that nothing needs to outlive it: a connection going away drops it unanswered. */
static void paid_usage_done(void *arg, const eng_err *err, const PGresult *res)
{
    (void)arg;
    if (err) {
        log_warn("could not record a paid llm attempt as usage", LOG_S("error", err->msg));
        return;
    }
    if (PQntuples(res) > 0)
        eng_metrics_llm_usage(PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
                              strtoll(PQgetvalue(res, 0, 3), NULL, 10),
                              strtoll(PQgetvalue(res, 0, 4), NULL, 10),
                              strtoll(PQgetvalue(res, 0, 5), NULL, 10),
                              strtod(PQgetvalue(res, 0, 0), NULL));
}

/* The provider answered (and charged for) an attempt that fails anyway (a reply that is not the
 * JSON asked for): recorded as usage (ok false) and counted, like an answer that succeeds. */
static void paid_failure(const llm_attempt *a, const llm_reply *r)
{
    const char *pname = prov_name((prov_id)a->prov);
    char tenant[24], run[24], in[24], out[24], cached[24];
    snprintf(tenant, sizeof tenant, "%lld", (long long)eng_step_tenant_id(a->ctx));
    snprintf(run, sizeof run, "%lld", (long long)eng_step_run_id(a->ctx));
    snprintf(in, sizeof in, "%lld", (long long)r->in_tokens);
    snprintf(out, sizeof out, "%lld", (long long)r->out_tokens);
    snprintf(cached, sizeof cached, "%lld", (long long)r->cached_tokens);
    const char *params[] = {tenant, run, eng_step_key(a->ctx), pname, a->model, in, out, cached};
    eng_db_query(eng_step_db(a->ctx),
                 "SELECT u.cost_usd, $4::text, $5::text, $6::bigint, $7::bigint, $8::bigint"
                 "  FROM flowd_usage_add(jsonb_build_array(jsonb_build_object("
                 "'tenant', $1::bigint, 'run', $2::bigint, 'step', $3::text, 'kind', 'llm',"
                 " 'provider', $4::text, 'model', $5::text, 'input_tokens', $6::bigint,"
                 " 'output_tokens', $7::bigint, 'cached_tokens', $8::bigint, 'ok', false))) u",
                 8, params, paid_usage_done, NULL);
}

static void call_done(void *arg, const eng_err *err, const eng_http_response *resp,
                      eng_http_call *call)
{
    llm_attempt *a = arg;
    a->call = NULL;
    prov_outcome o;
    prov_id pid = (prov_id)a->prov;
    if (prov_classify(a->cfg, pid, false, err, resp, call, eng_clock_wall_ms(), &o) != PROV_OK) {
        attempt_fail(a, o.cls == PROV_PERMANENT, o.code, o.msg, o.retry_after_ms);
        return;
    }
    llm_reply r;
    llm_reply_init(&r);
    const char *ct = eng_http_call_header(call, "content-type");
    llm_wire_parse(pid, ct && strstr(ct, "text/event-stream"), resp->body, resp->body_len, &r);
    if (*r.error || !r.done) {
        char *msg = prov_redact(a->cfg, *r.error ? r.error : "stream ended before the answer did");
        llm_reply_deinit(&r);
        attempt_fail(a, false, *r.error ? "provider_error" : "incomplete_answer", msg, 0);
        free(msg);
        return;
    }
    const char *text = r.text.ptr ? r.text.ptr : "";
    json_t *parsed = NULL;
    if (llm_input_json_mode(a->in)) {
        parsed = llm_answer_json(text);
        const json_t *schema = json_object_get(a->in, "json_schema");
        char why[512] = "the reply is not valid JSON";
        if (!parsed || (schema && !llm_answer_matches(schema, parsed, why, sizeof why))) {
            json_decref(parsed);
            paid_failure(a, &r);
            llm_reply_deinit(&r);
            attempt_fail(a, false, "invalid_json", why, 0);
            return;
        }
    }
    llm_answer ans = {.provider = prov_name(pid), .model = a->model, .fallback = a->is_fallback,
                      .text = text, .json = parsed, .finish = r.finish,
                      .in_tokens = r.in_tokens, .out_tokens = r.out_tokens,
                      .cached_tokens = r.cached_tokens,
                      .latency_ms = eng_clock_wall_ms() - a->t0_wall_ms};
    json_t *out = llm_answer_output(&ans);
    llm_reply_deinit(&r);
    rl_adjust(eng_step_db(a->ctx), eng_step_tenant_id(a->ctx), a->rl_name,
              r.in_tokens + r.out_tokens - a->est_tokens);
    finish_with(a, out);
}

static void start_call(llm_attempt *a)
{
    a->st = LLM_CALL;
    if (a->prov == LLM_SANDBOX || prov_config_sandbox(a->cfg)) {
        a->prov = LLM_SANDBOX;
        finish_with(a, llm_sandbox_answer(a->in, a->model, a->is_fallback));
        return;
    }
    json_t *body;
    char *url;
    const char *hdrs[5] = {"Content-Type: application/json", NULL, NULL, NULL, NULL};
    char *auth = NULL;
    const char *key = prov_config_get(a->cfg, "api_key");
    if (a->prov == PROV_ANTHROPIC) {
        body = llm_wire_anthropic_body(a->in, a->model);
        url = prov_config_url(a->cfg, "/v1/messages");
        auth = eng_xasprintf("x-api-key: %s", key ? key : "");
        hdrs[1] = auth;
        hdrs[2] = "anthropic-version: 2023-06-01";
    } else {
        body = llm_wire_openai_body((prov_id)a->prov, a->in, a->model);
        const char *own = json_string_value(json_object_get(a->in, "base_url"));
        /* a base URL from the definition never receives a configured key */
        url = own ? eng_xasprintf("%s/chat/completions", own)
                  : prov_config_url(a->cfg, "/chat/completions");
        if (key && !own) {
            auth = eng_xasprintf("Authorization: Bearer %s", key);
            hdrs[1] = auth;
        }
    }
    char *payload = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    int64_t budget = eng_step_timeout_ms(a->ctx);
    eng_http_request req = {.method = "POST", .url = url, .headers = hdrs, .body = payload,
                            .body_len = strlen(payload),
                            .timeout_ms = budget > 0 ? (long)budget : LLM_DEFAULT_TIMEOUT_MS,
                            .max_response_bytes = LLM_MAX_RESPONSE,
                            .public_only = prov_public_only(a->cfg)};
    a->t0_wall_ms = eng_clock_wall_ms();
    a->call = eng_httpc_start(eng_step_httpc(a->ctx), &req, call_done, a);
    free(payload);
    free(url);
    free(auth);
}

/* A statement before the call that failed with the connection (a failover, a server restart)
 * or on a transient conflict is no failure of the step: it goes back to the queue without using
 * an attempt. Nothing was reserved or sent yet. */
static bool attempt_db_interrupted(llm_attempt *a, const eng_err *err, const char *during)
{
    if (err->rc != ENG_EDB_RETRY)
        return false;
    log_info("llm attempt interrupted by the database", LOG_S("during", during),
             LOG_S("error", err->msg));
    eng_step_ctx *ctx = attempt_end(a);
    eng_step_snooze(ctx, eng_step_now_ms(ctx) + LLM_DB_RETRY_MS);
    return true;
}

static void budget_done(void *arg, const eng_err *err, int64_t wait_ms)
{
    llm_attempt *a = arg;
    a->take = NULL;
    if (err && attempt_db_interrupted(a, err, "rate limit"))
        return;
    if (err) {
        attempt_fail(a, false, "db_error", "could not check the rate limit", 0);
        return;
    }
    if (wait_ms > 0) {
        char *name = a->rl_name; /* outlives the attempt, for the outcome */
        a->rl_name = NULL;
        eng_step_ctx *ctx = attempt_end(a);
        eng_step_snooze_rate_limited(ctx, rl_wake_at(eng_step_now_ms(ctx), wait_ms), name);
        free(name);
        return;
    }
    start_call(a);
}

/* With the provider's settings: takes budget, then calls. */
static void config_ready(llm_attempt *a, prov_config *cfg)
{
    a->cfg = cfg;
    a->st = LLM_BUDGET;
    a->est_tokens = (int64_t)(llm_input_chars(a->in) + 3) / 4 + llm_input_max_tokens(a->in);
    if (rl_take_start(eng_step_db(a->ctx), eng_step_tenant_id(a->ctx), a->rl_name, 1,
                      a->est_tokens, budget_done, a, &a->take))
        start_call(a); /* an unlimited name: granted at once */
}

static void config_done(void *arg, const eng_err *err, prov_config *cfg)
{
    llm_attempt *a = arg;
    a->load = NULL;
    if (err && attempt_db_interrupted(a, err, "provider settings"))
        return;
    if (err) {
        attempt_fail(a, false, "db_error", "could not load the provider settings", 0);
        return;
    }
    config_ready(a, cfg);
}

static void load_config(llm_attempt *a);
static void quota_done(void *arg, const eng_err *err, quota_verdict verdict, const char *msg);

static void lookup_result(llm_batch_item *it, const eng_err *err, json_t *out)
{
    llm_attempt *a = ENG_CONTAINER_OF(it, llm_attempt, batch);
    if (!a->ctx) {
        json_decref(out);
        attempt_free(a);
        return;
    }
    if (err) {
        json_decref(out);
        attempt_fail(a, false, "db_error", "could not look up a recorded answer", 0);
        return;
    }
    if (out) {
        eng_step_ctx *ctx = attempt_end(a);
        log_info("llm answer replayed from its record",
                 LOG_I("run", (long long)eng_step_run_id(ctx)), LOG_S("step", eng_step_key(ctx)));
        eng_step_succeed(ctx, out);
        return;
    }
    /* a call is to be made (and paid for): the tenant's token and cost quotas come first */
    a->st = LLM_QUOTA;
    if (quota_check_start(a->ctx, QUOTA_LLM, NULL, quota_done, a, &a->quota))
        load_config(a);
}

static void quota_done(void *arg, const eng_err *err, quota_verdict verdict, const char *msg)
{
    llm_attempt *a = arg;
    a->quota = NULL;
    if (err && attempt_db_interrupted(a, err, "quota"))
        return;
    if (err) {
        attempt_fail(a, false, "db_error", "could not check the quotas", 0);
        return;
    }
    if (verdict == QUOTA_FAIL) {
        attempt_fail(a, true, "quota_exceeded", msg, 0);
        return;
    }
    if (verdict == QUOTA_RELEASED) {
        eng_step_released(attempt_end(a), "quota_blocked");
        return;
    }
    load_config(a);
}

/* With the quotas' leave: the provider's settings, then the rate limit, then the call. */
static void load_config(llm_attempt *a)
{
    a->st = LLM_CONFIG;
    if (a->prov == LLM_SANDBOX) {
        start_call(a);
        return;
    }
    prov_config *cfg = prov_config_load(a->ctx, (prov_id)a->prov, config_done, a, &a->load);
    if (cfg)
        config_ready(a, cfg); /* cached */
}

/* The provider and model serving this attempt (see the header comment). */
static bool pick_target(llm_attempt *a, const json_t *in, int attempt)
{
    const json_t *fb = json_object_get(in, "fallback");
    size_t ntargets = 1 + json_array_size(fb);
    json_int_t per = json_integer_value(json_object_get(in, "attempts_per_provider"));
    if (per < 1)
        per = LLM_ATTEMPTS_PER_PROVIDER;
    size_t idx = (size_t)((attempt - 1) / per);
    if (idx >= ntargets)
        idx = ntargets - 1;
    a->next_is_other = idx + 1 < ntargets && (attempt % per) == 0;
    a->is_fallback = idx > 0;
    const json_t *t = idx == 0 ? in : json_array_get(fb, idx - 1);
    const char *p = json_string_value(json_object_get(t, "provider"));
    a->model = json_string_value(json_object_get(t, "model"));
    if (!p)
        p = "openai";
    prov_id id;
    if (strcmp(p, "sandbox") == 0)
        a->prov = LLM_SANDBOX;
    else if (prov_from_name(p, &id) && id <= PROV_OPENAI_COMPATIBLE)
        a->prov = (int)id;
    else
        return false;
    const char *rl = json_string_value(json_object_get(in, "rate_limit"));
    a->rl_name = eng_xstrdup(rl && idx == 0 ? rl : p);
    return a->model != NULL;
}

static void llm_start(eng_step_ctx *ctx)
{
    stepin_record(ctx);
    const json_t *in = eng_step_input(ctx);
    json_t *step = json_pack("{s:O}", "input", in);
    eng_err verr;
    eng_rc rc = llm_input_validate(step, "", &verr);
    json_decref(step);
    if (rc != ENG_OK) {
        char *msg = eng_xasprintf("%s: %s", verr.field, verr.msg);
        eng_step_fail(ctx, true, "invalid_input", msg, 0);
        free(msg);
        return;
    }
    llm_attempt *a = eng_xcalloc(1, sizeof *a);
    a->ctx = ctx;
    a->in = in;
    if (!pick_target(a, in, eng_step_attempt(ctx))) {
        attempt_free(a);
        eng_step_fail(ctx, true, "invalid_input", "unknown llm provider", 0);
        return;
    }
    /* the hash covers the whole request; a changed input is a new request, not a replay */
    char *canon = json_dumps(in, JSON_COMPACT | JSON_SORT_KEYS);
    a->hash = wf_sha256_hex(canon, strlen(canon));
    free(canon);
    eng_step_set_data(ctx, a);
    /* A first attempt cannot have a recorded answer: only a step that ran before (its report
     * lost to a crash, its lease expired) is claimed again with attempt > 1. */
    if (eng_step_attempt(ctx) == 1) {
        lookup_result(&a->batch, NULL, NULL);
        return;
    }
    a->st = LLM_LOOKUP;
    llm_batch_lookup(eng_step_db(ctx), batch_item(a, lookup_result));
}

static void llm_cancel(eng_step_ctx *ctx)
{
    llm_attempt *a = eng_step_data(ctx);
    if (!a)
        return;
    eng_step_set_data(ctx, NULL);
    a->ctx = NULL;
    a->in = NULL;
    switch (a->st) {
    case LLM_LOOKUP:
    case LLM_RECORD:
        if (!llm_batch_withdraw(eng_step_db(ctx), &a->batch))
            return; /* its batch is on the wire: its callback sees ctx == NULL and frees */
        break;
    case LLM_QUOTA:
        quota_check_cancel(a->quota);
        break;
    case LLM_CONFIG:
        prov_load_cancel(a->load);
        break;
    case LLM_BUDGET:
        rl_take_cancel(a->take);
        break;
    case LLM_CALL:
        eng_httpc_cancel(a->call);
        break;
    }
    attempt_free(a);
}

static const eng_step_kind llm_kind = {
    .name = "llm",
    .default_max_attempts = 4,
    .validate = llm_input_validate,
    .start = llm_start,
    .cancel = llm_cancel,
};

void step_llm_register(void)
{
    eng_step_register(&llm_kind);
}
