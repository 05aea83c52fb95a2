/* engine/builtin_steps.c: the step kinds the engine itself provides.
 *
 * transform  output = its rendered input; pure (engine/step.h): computed inside its claim's
 *            transaction
 * delay      {"for": "2h"} after the step became ready, or {"until": RFC 3339}: a durable timer.
 *            While it waits nothing is in flight: the step sleeps in the queue (snooze). */
#include <stdio.h>

#include "engine/builtin.h"
#include "engine/clock.h"
#include "engine/duration.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/wf_template.h"

static void transform_start(eng_step_ctx *ctx)
{
    eng_step_succeed(ctx, json_deep_copy(eng_step_input(ctx)));
}

static const eng_step_kind transform_kind = {
    .name = "transform",
    .default_max_attempts = 1,
    .start = transform_start,
    .pure = true,
};

static eng_rc delay_validate(const json_t *step, const char *ptr, eng_err *err)
{
    const json_t *input = json_object_get(step, "input");
    char field[160];
    if (!json_is_object(input)) {
        snprintf(field, sizeof field, "%s/input", ptr);
        return eng_err_field(err, ENG_EINVAL, field, "delay needs an input object with \"for\" or \"until\"");
    }
    const json_t *for_v = json_object_get(input, "for");
    const json_t *until_v = json_object_get(input, "until");
    if (!for_v == !until_v) {
        snprintf(field, sizeof field, "%s/input", ptr);
        return eng_err_field(err, ENG_EINVAL, field, "delay needs exactly one of \"for\" and \"until\"");
    }
    const char *name = for_v ? "for" : "until";
    const json_t *v = for_v ? for_v : until_v;
    snprintf(field, sizeof field, "%s/input/%s", ptr, name);
    if (!json_is_string(v))
        return eng_err_field(err, ENG_EINVAL, field, "must be a string");
    if (wf_template_is_templated(json_string_value(v)))
        return ENG_OK;
    int64_t ms;
    eng_err inner;
    eng_rc rc = for_v ? eng_duration_parse(json_string_value(v), &ms, &inner)
                      : eng_time_parse_rfc3339(json_string_value(v), &ms, &inner);
    if (rc != ENG_OK)
        return eng_err_field(err, rc, field, "%s", inner.msg);
    return ENG_OK;
}

static void delay_start(eng_step_ctx *ctx)
{
    const json_t *input = eng_step_input(ctx);
    const char *for_s = json_string_value(json_object_get(input, "for"));
    const char *until_s = json_string_value(json_object_get(input, "until"));
    int64_t target = 0;
    eng_err err;
    eng_rc rc;
    if (for_s) {
        int64_t ms = 0;
        rc = eng_duration_parse(for_s, &ms, &err);
        target = eng_step_ready_at_ms(ctx) + ms;
    } else if (until_s) {
        rc = eng_time_parse_rfc3339(until_s, &target, &err);
    } else {
        rc = eng_err_set(&err, ENG_EINVAL, "delay needs \"for\" or \"until\" as a string");
    }
    if (rc != ENG_OK) {
        eng_step_fail(ctx, true, "invalid_input", err.msg, 0);
        return;
    }
    if (eng_step_now_ms(ctx) < target) {
        eng_step_snooze(ctx, target);
        return;
    }
    char at[40];
    eng_time_format_rfc3339(target, at, sizeof at);
    eng_step_succeed(ctx, json_pack("{s:s}", "until", at));
}

static const eng_step_kind delay_kind = {
    .name = "delay",
    .default_max_attempts = 3,
    .validate = delay_validate,
    .start = delay_start,
};

void eng_step_register_builtins(void)
{
    eng_step_register(&transform_kind);
    eng_step_register(&delay_kind);
    eng_step_register_flow_builtins();
}
