/* steps/whatsapp.c: the "whatsapp" kind, WhatsApp Cloud API messages
 * (docs/internals/provider-apis.md §5) through the send ledger (steps/sendledger.h).
 *
 * input: {to: E.164, text?: string, preview_url?: bool,
 *         template?: {name, language: "en_US" | {code}, components?: [...]},
 *         policy?, item?, resolve?}                       (exactly one of text and template)
 * output: {to, provider: "whatsapp" | "sandbox", message_id (wamid or the sandbox id),
 *          status ("accepted" or "held_for_quality_assessment"), wa_id?, send_key, sandbox?}
 *
 * The send key travels in biz_opaque_callback_data, echoed in status webhooks: that is how
 * api/routes_hooks.c resolves an ambiguous send. The Cloud API has no look-up by our key. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "steps/sendledger.h"

static eng_rc wa_prepare(const json_t *in, const prov_config *cfg, const char *send_key,
                         send_msg *msg, eng_err *err)
{
    (void)cfg;
    char to[24];
    if (step_send_input_phone(in, to, err) != ENG_OK)
        return ENG_EINVAL;
    const json_t *text = json_object_get(in, "text");
    const json_t *tmpl = json_object_get(in, "template");
    if (!text == !tmpl)
        return eng_err_field(err, ENG_EINVAL, "/input", "exactly one of text and template is needed");
    /* on the wire "to" has no '+' */
    json_t *req = json_pack("{s:s, s:s, s:s, s:s}", "messaging_product", "whatsapp",
                            "recipient_type", "individual", "to", to + 1,
                            "biz_opaque_callback_data", send_key);
    if (text) {
        if (!json_is_string(text) || json_string_length(text) == 0 ||
            json_string_length(text) > 4096) {
            json_decref(req);
            return eng_err_field(err, ENG_EINVAL, "/input/text",
                                 "text must be a string of 1 to 4096 characters");
        }
        const json_t *preview = json_object_get(in, "preview_url");
        json_object_set_new(req, "type", json_string("text"));
        json_object_set_new(req, "text", json_pack("{s:O, s:b}", "body", text, "preview_url",
                                                   json_is_true(preview)));
    } else {
        const json_t *name = json_object_get(tmpl, "name");
        const json_t *lang = json_object_get(tmpl, "language");
        const json_t *comps = json_object_get(tmpl, "components");
        const json_t *code = json_is_object(lang) ? json_object_get(lang, "code") : lang;
        if (!json_is_object(tmpl) || !json_is_string(name) || !json_is_string(code) ||
            (comps && !json_is_array(comps))) {
            json_decref(req);
            return eng_err_field(err, ENG_EINVAL, "/input/template",
                                 "template must be {name, language, components?: [...]}");
        }
        json_t *t = json_pack("{s:O, s:{s:O}}", "name", name, "language", "code", code);
        if (comps)
            json_object_set(t, "components", (json_t *)comps);
        json_object_set_new(req, "type", json_string("template"));
        json_object_set_new(req, "template", t);
    }
    msg->recipient = eng_xstrdup(to);
    msg->request = req;
    msg->output = json_pack("{s:s}", "to", to);
    return ENG_OK;
}

static void wa_sent(void *arg, const eng_err *err, const eng_http_response *resp,
                    eng_http_call *call)
{
    step_send *ss = arg;
    prov_outcome o;
    if (!step_send_call_ok(ss, PROV_WHATSAPP, err, resp, call, &o))
        return;
    json_t *j = json_loads(resp->body, 0, NULL);
    const json_t *m = json_array_get(json_object_get(j, "messages"), 0);
    const char *id = json_string_value(json_object_get(m, "id"));
    if (!id) {
        json_decref(j);
        step_send_no_message_id(ss, &o, "whatsapp", "message id");
        return;
    }
    const char *status = json_string_value(json_object_get(m, "message_status"));
    const char *wa_id = json_string_value(
        json_object_get(json_array_get(json_object_get(j, "contacts"), 0), "wa_id"));
    json_t *out = json_pack("{s:s}", "status", status ? status : "accepted");
    if (wa_id)
        json_object_set_new(out, "wa_id", json_string(wa_id));
    step_send_transport_done(ss, &o, id, out); /* id is j's: released after the report */
    json_decref(j);
}

static eng_http_call *wa_transport(step_send *ss, const prov_config *cfg, const send_msg *msg)
{
    char *path = eng_xasprintf("/%s/messages", prov_config_get(cfg, "phone_number_id"));
    eng_http_call *call =
        step_send_post_json(ss, cfg, path, prov_config_get(cfg, "token"), msg->request, wa_sent);
    free(path);
    return call;
}

static const char *wa_suppress(const prov_outcome *o)
{
    if (strcmp(o->provider_code, "131026") == 0)
        return "131026";
    if (strcmp(o->provider_code, "131049") == 0) /* provider-apis.md §7.8 */
        return "131049";
    return NULL;
}

static const send_ops wa_ops = {
    .kind = "whatsapp",
    .channel = "whatsapp",
    .provider = PROV_WHATSAPP,
    .prepare = wa_prepare,
    .transport = wa_transport,
    .suppress_reason = wa_suppress,
};

static void wa_start(eng_step_ctx *ctx)
{
    step_send_start(ctx, &wa_ops);
}

static eng_rc wa_validate(const json_t *step, const char *ptr, eng_err *err)
{
    eng_rc rc = step_send_validate_to(step, ptr, err);
    if (rc == ENG_OK)
        rc = step_send_validate_phone(step, ptr, "to", err);
    if (rc != ENG_OK)
        return rc;
    const json_t *in = json_object_get(step, "input");
    if (!json_object_get(in, "text") == !json_object_get(in, "template"))
        return step_send_invalid(err, ptr, "/input", "exactly one of text and template is needed");
    return ENG_OK;
}

static const eng_step_kind wa_kind = {
    .name = "whatsapp",
    .default_max_attempts = 5,
    .validate = wa_validate,
    .start = wa_start,
    .cancel = step_send_cancel,
};

void step_whatsapp_register(void)
{
    eng_step_register(&wa_kind);
}
