/* steps/suppress.c: the "suppress" kind, putting a recipient on the tenant's suppression list from
 * a workflow (an opt-out understood from a free-text reply, a complaint, ...).
 *
 * input:  {channel: "email" | "sms" | "whatsapp", address, reason? (default "opt_out")}
 * output: {channel, address (normalized as the send ledger does), reason, suppressed: true}
 *
 * From then on every email/sms/whatsapp step to that address on that channel ends skipped
 * (flowd_send_claim). Idempotent: an address already on the list keeps its first reason and the
 * step still succeeds, so a re-run after a crash changes nothing. A START reply through the
 * Twilio webhook lifts only reason "stop" entries: a workflow that tells the customer "reply START
 * to undo" should suppress with reason "stop". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/db.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/wf_template.h"
#include "steps/sendledger.h"
#include "steps/steps.h"

#define SUPPRESS_REASON_MAX 200

/* One attempt while its statement is in flight. ctx is NULL once cancelled: the statement's
 * completion then only frees it. */
typedef struct suppress_op {
    eng_step_ctx *ctx;
    json_t *output;
} suppress_op;

static bool channel_ok(const char *c)
{
    return c && (strcmp(c, "email") == 0 || strcmp(c, "sms") == 0 || strcmp(c, "whatsapp") == 0);
}

static bool templated(const json_t *v)
{
    return json_is_string(v) && wf_template_is_templated(json_string_value(v));
}

static eng_rc suppress_field(eng_err *err, const char *ptr, const char *name, const char *msg)
{
    char field[128];
    snprintf(field, sizeof field, "%.80s/input%s%.30s", ptr, *name ? "/" : "", name);
    return eng_err_field(err, ENG_EINVAL, field, "%s", msg);
}

static eng_rc suppress_validate(const json_t *step, const char *ptr, eng_err *err)
{
    const json_t *in = json_object_get(step, "input");
    if (!json_is_object(in))
        return suppress_field(err, ptr, "", "suppress needs an input object with channel and address");
    const char *name;
    const json_t *v;
    json_object_foreach((json_t *)in, name, v) {
        if (strcmp(name, "channel") && strcmp(name, "address") && strcmp(name, "reason"))
            return suppress_field(err, ptr, name, "unknown field");
    }
    const json_t *channel = json_object_get(in, "channel");
    if (!templated(channel) && !channel_ok(json_string_value(channel)))
        return suppress_field(err, ptr, "channel", "must be \"email\", \"sms\" or \"whatsapp\"");
    const json_t *address = json_object_get(in, "address");
    if (!json_is_string(address) || json_string_length(address) == 0)
        return suppress_field(err, ptr, "address", "must be an address or a template");
    const json_t *reason = json_object_get(in, "reason");
    if (reason && (!json_is_string(reason) || json_string_length(reason) == 0))
        return suppress_field(err, ptr, "reason", "must be a non-empty string");
    return ENG_OK;
}

static void suppress_done(void *arg, const eng_err *err, const PGresult *res)
{
    suppress_op *op = arg;
    eng_step_ctx *ctx = op->ctx;
    json_t *output = op->output;
    free(op);
    if (!ctx) {
        json_decref(output);
        return;
    }
    eng_step_set_data(ctx, NULL);
    if (err || PQntuples(res) != 1) {
        json_decref(output);
        eng_step_fail(ctx, false, "db", err ? err->msg : "the suppression was not recorded", 0);
        return;
    }
    eng_step_succeed(ctx, output);
}

static void suppress_start(eng_step_ctx *ctx)
{
    const json_t *in = eng_step_input(ctx);
    const char *channel = json_string_value(json_object_get(in, "channel"));
    const char *address = json_string_value(json_object_get(in, "address"));
    const json_t *reason_v = json_object_get(in, "reason");
    const char *reason = json_is_null(reason_v) || !reason_v ? "opt_out" : json_string_value(reason_v);
    if (!channel_ok(channel)) {
        eng_step_fail(ctx, true, "invalid_input", "channel must be \"email\", \"sms\" or \"whatsapp\"",
                      0);
        return;
    }
    if (!reason || !*reason || strlen(reason) > SUPPRESS_REASON_MAX) {
        eng_step_fail(ctx, true, "invalid_input", "reason must be a string of 1 to 200 characters",
                      0);
        return;
    }
    char phone[24];
    char *norm = NULL;
    if (strcmp(channel, "email") == 0)
        norm = step_send_norm_email(address);
    else if (step_send_norm_phone(address, phone))
        norm = eng_xstrdup(phone);
    if (!norm) {
        eng_step_fail(ctx, true, "invalid_input",
                      strcmp(channel, "email") == 0 ? "address must be an email address"
                                                    : "address must be a phone number in E.164",
                      0);
        return;
    }
    suppress_op *op = eng_xcalloc(1, sizeof *op);
    op->ctx = ctx;
    op->output = json_pack("{s:s, s:s, s:s, s:b}", "channel", channel, "address", norm, "reason",
                           reason, "suppressed", 1);
    eng_step_set_data(ctx, op);
    char tenant[24];
    snprintf(tenant, sizeof tenant, "%lld", (long long)eng_step_tenant_id(ctx));
    const char *params[] = {tenant, channel, norm, reason, "workflow"};
    eng_db_query(eng_step_db(ctx),
                 "SELECT created FROM flowd_suppression_add($1, $2, $3, $4, $5)", 5, params,
                 suppress_done, op);
    free(norm);
}

static void suppress_cancel(eng_step_ctx *ctx)
{
    suppress_op *op = eng_step_data(ctx);
    eng_step_set_data(ctx, NULL);
    if (op)
        op->ctx = NULL; /* suppress_done frees it */
}

static const eng_step_kind suppress_kind = {
    .name = "suppress",
    .default_max_attempts = 5,
    .validate = suppress_validate,
    .start = suppress_start,
    .cancel = suppress_cancel,
};

void step_suppress_register(void)
{
    eng_step_register(&suppress_kind);
}
