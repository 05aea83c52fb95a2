/* engine/builtin_flow.c: the built-in kinds that shape a run's flow rather than do work.
 *
 * wait_event  {"event": "lead.replied", "key": "{{input.lead.id}}", "timeout": "7d"}: sleeps in the
 *             database until the event arrives; succeeds with its data, or {"timed_out": true}.
 * map         {"items": "{{input.prospects}}", "workflow": "playbook" | "step": {...},
 *              "input": {... {{item}} {{index}} ...}, "concurrency": 10, "allow_failures": false}:
 *             one child run per item, at most `concurrency` at once; succeeds with
 *             {"results": [...]} in item order. An inline "step" becomes a one-step child workflow
 *             whose input is the step's input rendered per item. Without allow_failures, the
 *             children's inputs are checked against the named workflow's input check (wf_def.h)
 *             before any child starts: one that does not match fails the step for good at once
 *             instead of after the children before it ran. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/builtin.h"
#include "engine/db.h"
#include "engine/duration.h"
#include "engine/jschema.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/wf_def.h"
#include "engine/wf_template.h"

static eng_rc flow_field_error(eng_err *err, const char *ptr, const char *name, const char *msg)
{
    char field[sizeof ((eng_err *)0)->field];
    snprintf(field, sizeof field, "%.60s/input%s%.60s", ptr, name[0] ? "/" : "", name);
    return eng_err_field(err, ENG_EINVAL, field, "%s", msg);
}

static bool flow_templated(const json_t *v)
{
    return json_is_string(v) && wf_template_is_templated(json_string_value(v));
}

static eng_rc wait_validate(const json_t *step, const char *ptr, eng_err *err)
{
    const json_t *input = json_object_get(step, "input");
    if (!json_is_object(input))
        return flow_field_error(err, ptr, "", "wait_event needs an input object with event and key");
    const char *name;
    const json_t *v;
    json_object_foreach((json_t *)input, name, v) {
        if (strcmp(name, "event") && strcmp(name, "key") && strcmp(name, "timeout"))
            return flow_field_error(err, ptr, name, "unknown field");
    }
    const json_t *event = json_object_get(input, "event");
    if (!json_is_string(event) || json_string_length(event) == 0)
        return flow_field_error(err, ptr, "event", "must be a non-empty string");
    const json_t *key = json_object_get(input, "key");
    if (!json_is_string(key) && !json_is_integer(key))
        return flow_field_error(err, ptr, "key", "must be a string or an integer");
    const json_t *timeout = json_object_get(input, "timeout");
    if (timeout && !flow_templated(timeout)) {
        int64_t ms;
        eng_err inner;
        if (!json_is_string(timeout) ||
            eng_duration_parse(json_string_value(timeout), &ms, &inner) != ENG_OK)
            return flow_field_error(err, ptr, "timeout", "must be a duration such as \"7d\"");
    }
    return ENG_OK;
}

static void wait_start(eng_step_ctx *ctx)
{
    const json_t *input = eng_step_input(ctx);
    const char *event = json_string_value(json_object_get(input, "event"));
    const json_t *key = json_object_get(input, "key");
    char keybuf[32];
    const char *key_s = json_string_value(key);
    if (json_is_integer(key)) {
        snprintf(keybuf, sizeof keybuf, "%lld", (long long)json_integer_value(key));
        key_s = keybuf;
    }
    if (!event || !key_s || !*key_s) {
        eng_step_fail(ctx, true, "invalid_input", "event and key must render to non-empty strings", 0);
        return;
    }
    int64_t until = 0;
    const char *timeout = json_string_value(json_object_get(input, "timeout"));
    if (timeout) {
        int64_t ms;
        eng_err err;
        if (eng_duration_parse(timeout, &ms, &err) != ENG_OK) {
            eng_step_fail(ctx, true, "invalid_input", err.msg, 0);
            return;
        }
        until = eng_step_now_ms(ctx) + ms;
    }
    eng_step_wait_event(ctx, event, key_s, until);
}

static const eng_step_kind wait_kind = {
    .name = "wait_event",
    .default_max_attempts = 3,
    .validate = wait_validate,
    .start = wait_start,
};

/* The one-step child workflow of an inline map step, before compilation (new reference). Each
 * child run's input is the step's input rendered for its item, so the child step takes "{{input}}";
 * keep_input keeps the step's own input instead, for checking it at registration. */
static json_t *map_inline_doc(const char *parent, const char *key, const json_t *step,
                              bool keep_input)
{
    json_t *child = json_deep_copy(step);
    if (!keep_input)
        json_object_set_new(child, "input", json_string("{{input}}"));
    if (!json_object_get(child, "key"))
        json_object_set_new(child, "key", json_string("item"));
    char *name = eng_xasprintf("inline.%s.%s", parent, key);
    json_t *doc = json_pack("{s:s, s:[o]}", "name", name, "steps", child);
    free(name);
    return doc;
}

static eng_rc map_validate(const json_t *step, const char *ptr, eng_err *err)
{
    const json_t *input = json_object_get(step, "input");
    if (!json_is_object(input))
        return flow_field_error(err, ptr, "", "map needs an input object with items");
    const char *name;
    const json_t *v;
    json_object_foreach((json_t *)input, name, v) {
        if (strcmp(name, "items") && strcmp(name, "workflow") && strcmp(name, "step") &&
            strcmp(name, "input") && strcmp(name, "concurrency") && strcmp(name, "allow_failures"))
            return flow_field_error(err, ptr, name, "unknown field");
    }
    const json_t *items = json_object_get(input, "items");
    if (!json_is_array(items) && !flow_templated(items))
        return flow_field_error(err, ptr, "items", "must be an array or a template such as \"{{input.list}}\"");
    const json_t *wf = json_object_get(input, "workflow");
    const json_t *inline_step = json_object_get(input, "step");
    if (!wf == !inline_step)
        return flow_field_error(err, ptr, "", "map needs exactly one of \"workflow\" and \"step\"");
    if (wf && (!json_is_string(wf) || json_string_length(wf) == 0))
        return flow_field_error(err, ptr, "workflow", "must be a workflow name");
    if (inline_step && json_object_get(input, "input"))
        return flow_field_error(err, ptr, "input", "an inline step takes its input inside \"step\"");
    const json_t *conc = json_object_get(input, "concurrency");
    if (conc && (!json_is_integer(conc) || json_integer_value(conc) < 1 ||
                 json_integer_value(conc) > 10000))
        return flow_field_error(err, ptr, "concurrency", "must be an integer from 1 to 10000");
    const json_t *allow = json_object_get(input, "allow_failures");
    if (allow && !json_is_boolean(allow))
        return flow_field_error(err, ptr, "allow_failures", "must be true or false");
    if (inline_step) {
        if (!json_is_object(inline_step))
            return flow_field_error(err, ptr, "step", "must be a step object");
        json_t *doc = map_inline_doc("check", "check", inline_step, true);
        json_t *def = NULL;
        eng_err inner;
        eng_rc rc = wf_def_compile(doc, &def, &inner);
        json_decref(doc);
        json_decref(def);
        if (rc != ENG_OK) {
            /* inner.field is /steps/0/...: report it under this step's input/step */
            const char *rest = strncmp(inner.field, "/steps/0", 8) == 0 ? inner.field + 8 : "";
            char field[80];
            snprintf(field, sizeof field, "step%.70s", rest);
            return flow_field_error(err, ptr, field, inner.msg);
        }
    }
    return ENG_OK;
}

static void map_fail(eng_step_ctx *ctx, const char *msg)
{
    eng_step_fail(ctx, true, "invalid_input", msg, 0);
}

/* A map waiting for its child workflow's input check; `cancelled` once the attempt was stopped
 * (the query's callback then only frees this). */
typedef struct map_check {
    eng_step_ctx *ctx;
    json_t *spec; /* what eng_step_map gets once the inputs are checked */
    eng_db_op *op;
    bool cancelled;
} map_check;

/* The first child input of spec that check (JSON text) refuses, as a message in msg; false when
 * all match. */
static bool map_input_refused(const json_t *spec, const char *check, char *msg, size_t size)
{
    json_t *schema = json_loads(check, JSON_DECODE_ANY, NULL);
    jschema *js = NULL;
    eng_err err;
    bool refused = false;
    if (schema && jschema_compile(schema, "", &js, &err) == ENG_OK) {
        const json_t *inputs = json_object_get(spec, "inputs");
        for (size_t i = 0; !refused && i < json_array_size(inputs); i++) {
            if (jschema_validate(js, json_array_get(inputs, i), "", &err) != ENG_OK) {
                snprintf(msg, size, "the input of item %zu does not match workflow %.100s's input "
                         "check: %.120s: %.200s", i,
                         json_string_value(json_object_get(spec, "workflow")), err.field, err.msg);
                refused = true;
            }
        }
    }
    jschema_free(js);
    json_decref(schema);
    return refused;
}

static void map_checked(void *arg, const eng_err *err, const PGresult *res)
{
    map_check *m = arg;
    eng_step_ctx *ctx = m->ctx;
    json_t *spec = m->spec;
    bool cancelled = m->cancelled;
    free(m);
    if (cancelled) {
        json_decref(spec);
        return;
    }
    eng_step_set_data(ctx, NULL);
    char msg[512];
    if (err) {
        json_decref(spec);
        eng_step_fail(ctx, false, "db_error", err->msg, 0);
    } else if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 1) &&
               map_input_refused(spec, PQgetvalue(res, 0, 1), msg, sizeof msg)) {
        json_decref(spec);
        map_fail(ctx, msg);
    } else {
        eng_step_map(ctx, spec); /* an unknown workflow is the database's to report */
    }
}

static void map_cancel(eng_step_ctx *ctx)
{
    map_check *m = eng_step_data(ctx);
    if (!m)
        return;
    m->cancelled = true;
    eng_db_cancel(m->op); /* its callback still runs once, and frees m */
}

static void map_start(eng_step_ctx *ctx)
{
    const json_t *raw = eng_step_input(ctx);
    const json_t *tctx = eng_step_template_ctx(ctx);
    eng_err err;
    json_t *items = NULL;
    if (wf_template_render(json_object_get(raw, "items"), tctx, &items, &err) != ENG_OK) {
        map_fail(ctx, err.msg);
        return;
    }
    if (!json_is_array(items)) {
        json_decref(items);
        map_fail(ctx, "items did not render to an array");
        return;
    }
    const json_t *inline_step = json_object_get(raw, "step");
    const json_t *tmpl = inline_step ? json_object_get(inline_step, "input")
                                     : json_object_get(raw, "input");
    json_t *inputs = json_array();
    json_t *item_ctx = json_copy((json_t *)tctx);
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item) {
        json_object_set(item_ctx, "item", item);
        json_object_set_new(item_ctx, "index", json_integer((json_int_t)i));
        json_t *one = NULL;
        if (tmpl && wf_template_render(tmpl, item_ctx, &one, &err) != ENG_OK) {
            json_decref(inputs);
            json_decref(item_ctx);
            json_decref(items);
            map_fail(ctx, err.msg);
            return;
        }
        json_array_append_new(inputs, one ? one : json_pack("{s:O, s:I}", "item", item, "index",
                                                            (json_int_t)i));
    }
    json_decref(item_ctx);
    json_decref(items);
    const json_t *conc = json_object_get(raw, "concurrency");
    json_t *spec = json_pack("{s:o, s:I, s:b}", "inputs", inputs, "concurrency",
                             (json_int_t)(conc ? json_integer_value(conc) : 10), "allow_failures",
                             json_is_true(json_object_get(raw, "allow_failures")));
    if (inline_step) {
        json_t *doc = map_inline_doc(eng_step_workflow(ctx), eng_step_key(ctx), inline_step, false);
        json_t *def = NULL;
        if (wf_def_compile(doc, &def, &err) != ENG_OK) {
            json_decref(doc);
            json_decref(spec);
            map_fail(ctx, err.msg);
            return;
        }
        char *digest = wf_def_digest(doc);
        json_object_set_new(spec, "def", def);
        json_object_set_new(spec, "digest", json_string(digest));
        free(digest);
        json_decref(doc);
    } else {
        json_object_set(spec, "workflow", json_object_get(raw, "workflow"));
        if (!json_is_true(json_object_get(raw, "allow_failures"))) {
            map_check *m = eng_xcalloc(1, sizeof *m);
            m->ctx = ctx;
            m->spec = spec;
            char tenant[24];
            snprintf(tenant, sizeof tenant, "%lld", (long long)eng_step_tenant_id(ctx));
            const char *params[] = {tenant, json_string_value(json_object_get(raw, "workflow"))};
            eng_step_set_data(ctx, m);
            m->op = eng_db_query(eng_step_db(ctx),
                                 "SELECT version, input_check FROM flowd_input_check($1, $2, NULL)",
                                 2, params, map_checked, m);
            return;
        }
    }
    eng_step_map(ctx, spec);
}

static const eng_step_kind map_kind = {
    .name = "map",
    .default_max_attempts = 3,
    .validate = map_validate,
    .start = map_start,
    .cancel = map_cancel,
    .raw_input = true,
};

void eng_step_register_flow_builtins(void)
{
    eng_step_register(&wait_kind);
    eng_step_register(&map_kind);
}
