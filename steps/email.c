/* steps/email.c: the "email" kind, SendGrid v3 Mail Send (docs/internals/provider-apis.md §3)
 * through the send ledger (steps/sendledger.h).
 *
 * input: {to: "a@x" | {email, name?}, from?: "b@x" | {email, name?} (default: the provider's
 *         "from" setting), reply_to?, subject (unless template_id), text? and/or html? (one needed
 *         unless template_id), template_id?, dynamic_template_data?, categories?: [string],
 *         policy?, item?, resolve?}
 * output: {to, from, provider: "sendgrid" | "sandbox", message_id (X-Message-Id or the sandbox id),
 *          status: "accepted", send_key, sandbox?: true}
 *
 * The send key travels in personalizations[0].custom_args.flowd_send_key, which SendGrid echoes on
 * every Event Webhook event: that is how api/routes_hooks.c resolves an ambiguous send. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "steps/sendledger.h"

/* {email, name?} from a string or an object; NULL (err set) when invalid. New reference. */
static json_t *address(const json_t *v, const char *field, char **norm, eng_err *err)
{
    const json_t *email = json_is_object(v) ? json_object_get(v, "email") : v;
    const json_t *name = json_is_object(v) ? json_object_get(v, "name") : NULL;
    char *n = step_send_norm_email(json_string_value(email));
    if (!n || (name && !json_is_string(name))) {
        free(n);
        eng_err_field(err, ENG_EINVAL, field, "must be an email address or {email, name}");
        return NULL;
    }
    json_t *out = json_pack("{s:s}", "email", json_string_value(email));
    if (name && json_string_length(name) > 0)
        json_object_set(out, "name", (json_t *)name);
    if (norm)
        *norm = n;
    else
        free(n);
    return out;
}

static eng_rc email_prepare(const json_t *in, const prov_config *cfg, const char *send_key,
                            send_msg *msg, eng_err *err)
{
    char *rcpt = NULL;
    json_t *to = address(json_object_get(in, "to"), "/input/to", &rcpt, err);
    if (!to)
        return err ? err->rc : ENG_EINVAL;
    const json_t *from_in = json_object_get(in, "from");
    if (json_is_null(from_in)) /* a template's null default: use the provider's setting */
        from_in = NULL;
    json_t *from_default = NULL;
    if (!from_in && prov_config_get(cfg, "from"))
        from_in = from_default = json_string(prov_config_get(cfg, "from"));
    json_t *from = from_in ? address(from_in, "/input/from", NULL, err) : NULL;
    json_decref(from_default);
    json_t *req = NULL;
    if (!from) {
        if (!from_in)
            eng_err_field(err, ENG_EINVAL, "/input/from",
                          "from is required (or the provider setting \"from\")");
        goto fail;
    }
    const json_t *subject = json_object_get(in, "subject"), *text = json_object_get(in, "text"),
                 *html = json_object_get(in, "html"), *tmpl = json_object_get(in, "template_id");
    if ((subject && !json_is_string(subject)) || (text && !json_is_string(text)) ||
        (html && !json_is_string(html)) || (tmpl && !json_is_string(tmpl))) {
        eng_err_field(err, ENG_EINVAL, "/input", "subject, text, html and template_id are strings");
        goto fail;
    }
    if (!tmpl && (!subject || json_string_length(subject) == 0)) {
        eng_err_field(err, ENG_EINVAL, "/input/subject", "subject is required");
        goto fail;
    }
    if (!tmpl && !text && !html) {
        eng_err_field(err, ENG_EINVAL, "/input/text", "text or html is required");
        goto fail;
    }
    json_t *pers = json_pack("{s:[O], s:{s:s}}", "to", to, "custom_args", "flowd_send_key",
                             send_key);
    const json_t *dtd = json_object_get(in, "dynamic_template_data");
    if (dtd) {
        if (!json_is_object(dtd)) {
            json_decref(pers);
            eng_err_field(err, ENG_EINVAL, "/input/dynamic_template_data", "must be an object");
            goto fail;
        }
        json_object_set(pers, "dynamic_template_data", (json_t *)dtd);
    }
    req = json_pack("{s:[o], s:O}", "personalizations", pers, "from", from);
    if (subject)
        json_object_set(req, "subject", (json_t *)subject);
    if (text || html) {
        json_t *content = json_array();
        if (text) /* text/plain goes before text/html */
            json_array_append_new(content, json_pack("{s:s, s:O}", "type", "text/plain", "value",
                                                     text));
        if (html)
            json_array_append_new(content, json_pack("{s:s, s:O}", "type", "text/html", "value",
                                                     html));
        json_object_set_new(req, "content", content);
    }
    if (tmpl)
        json_object_set(req, "template_id", (json_t *)tmpl);
    const json_t *reply_to = json_object_get(in, "reply_to");
    if (reply_to) {
        json_t *r = address(reply_to, "/input/reply_to", NULL, err);
        if (!r)
            goto fail;
        json_object_set_new(req, "reply_to", r);
    }
    const json_t *cats = json_object_get(in, "categories");
    if (cats) {
        size_t i;
        const json_t *c;
        bool ok = json_is_array(cats) && json_array_size(cats) <= 10;
        json_array_foreach((json_t *)cats, i, c) ok = ok && json_is_string(c);
        if (!ok) {
            eng_err_field(err, ENG_EINVAL, "/input/categories", "must be up to 10 strings");
            goto fail;
        }
        json_object_set(req, "categories", (json_t *)cats);
    }
    msg->recipient = rcpt;
    msg->request = req;
    msg->output = json_pack("{s:s, s:O}", "to", rcpt, "from", json_object_get(from, "email"));
    json_decref(to);
    json_decref(from);
    return ENG_OK;
fail:
    free(rcpt);
    json_decref(to);
    json_decref(from);
    json_decref(req);
    return ENG_EINVAL;
}

static void email_sent(void *arg, const eng_err *err, const eng_http_response *resp,
                       eng_http_call *call)
{
    step_send *ss = arg;
    prov_outcome o;
    if (step_send_call_ok(ss, PROV_SENDGRID, err, resp, call, &o))
        step_send_transport_done(ss, &o, eng_http_call_header(call, "X-Message-Id"), NULL);
}

static eng_http_call *email_transport(step_send *ss, const prov_config *cfg, const send_msg *msg)
{
    return step_send_post_json(ss, cfg, "/v3/mail/send", prov_config_get(cfg, "api_key"),
                               msg->request, email_sent);
}

static const send_ops email_ops = {
    .kind = "email",
    .channel = "email",
    .provider = PROV_SENDGRID,
    .prepare = email_prepare,
    .transport = email_transport,
};

static void email_start(eng_step_ctx *ctx)
{
    step_send_start(ctx, &email_ops);
}

static const eng_step_kind email_kind = {
    .name = "email",
    .default_max_attempts = 5,
    .validate = step_send_validate_to,
    .start = email_start,
    .cancel = step_send_cancel,
};

void step_email_register(void)
{
    eng_step_register(&email_kind);
}
