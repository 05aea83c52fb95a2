/* tests/support/th_mockmsg.h: mock SendGrid, Twilio and WhatsApp Cloud API servers on th_mockhttp,
 * speaking the wire formats of docs/internals/provider-apis.md §3-§5, plus the signing side of
 * their webhooks.
 *
 * Each send request is answered by the next scripted answer (th_msg_push), or by success when the
 * script is empty:
 *   SendGrid  POST /v3/mail/send                    202, empty body, X-Message-Id
 *   Twilio    POST /2010-04-01/Accounts/{sid}/Messages.json   201 message JSON (num_segments as a
 *             string); GET of the same path lists the accepted messages (filter To=)
 *   WhatsApp  POST /{phone_number_id}/messages      200 {messaging_product, contacts, messages}
 * Error answers carry the provider's documented error body for their status and provider code,
 * and the retry headers the script asks for. A wrong credential gets the provider's 401.
 *
 * "Accepted" sends are counted per send key (SendGrid custom_args.flowd_send_key, WhatsApp
 * biz_opaque_callback_data, Twilio the StatusCallback's send_key, else "To|Body"), so a test can
 * assert zero duplicates. An answer with accept=true on an error status or with hang_ms records
 * the send as accepted and then fails or holds the connection: the ambiguous cases of §7.
 *
 * Threads: the server runs on its own thread; every function is safe from the test thread. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

typedef enum th_msg_flavor { TH_MSG_SENDGRID, TH_MSG_TWILIO, TH_MSG_WHATSAPP } th_msg_flavor;

typedef struct th_msg_answer {
    int status;              /* 0: success; else an error answer with this HTTP status */
    long code;               /* the provider's error code (Twilio 21610, WhatsApp 131026...) */
    bool accept;             /* record the send as accepted even though the answer fails/hangs */
    int delay_ms;            /* wait before answering (slow provider) */
    int hang_ms;             /* accept, then hold the connection this long before answering */
    const char *retry_after; /* Retry-After header value, or NULL */
    bool ratelimit_reset;    /* SendGrid: X-RateLimit-Remaining 0 and Reset = now + 2 s */
    bool held;               /* WhatsApp: message_status "held_for_quality_assessment" */
    bool drop;               /* close the connection without answering (after reading) */
    bool echo;               /* the error's message repeats the request's Authorization header and
                                target, as some servers and proxies do */
} th_msg_answer;

typedef struct th_msg th_msg;

/* Starts a mock. Credentials the mock expects: SendGrid "SG.mock-key"; Twilio account
 * TH_MSG_TWILIO_SID with token TH_MSG_TWILIO_TOKEN; WhatsApp token "wa-mock-token" and phone number
 * id "1065". */
th_msg *th_msg_start(th_msg_flavor flavor);
void th_msg_stop(th_msg *m); /* NULL-safe */
const char *th_msg_url(const th_msg *m);

#define TH_MSG_SENDGRID_KEY "SG.mock-key"
#define TH_MSG_TWILIO_SID "AC0123456789abcdef0123456789abcdef"
#define TH_MSG_TWILIO_TOKEN "twilio-mock-token-0123"
#define TH_MSG_WA_TOKEN "wa-mock-token"
#define TH_MSG_WA_PHONE_ID "1065"

/* Queues an answer for the next send request (copied; strings must be literals or outlive use). */
void th_msg_push(th_msg *m, th_msg_answer a);
/* Send requests received (any outcome), and sends accepted in total / under one key. */
int th_msg_requests(th_msg *m);
int th_msg_accepted(th_msg *m);
int th_msg_accepted_for(th_msg *m, const char *send_key);
/* Look-up (GET) requests received (Twilio). */
int th_msg_lookups(th_msg *m);
/* The n-th (0-based) send request: its parsed body (JSON; Twilio's form as an object whose
 * repeated names become arrays), its Authorization and Content-Type headers and its target. NULL
 * when there is no such request. New references / new strings (free them). */
json_t *th_msg_request_body(th_msg *m, int n);
char *th_msg_request_header(th_msg *m, int n, const char *name);
char *th_msg_request_target(th_msg *m, int n);
/* The provider id the mock gave to the send under send_key (X-Message-Id, SM..., wamid), or NULL;
 * new string. */
char *th_msg_message_id(th_msg *m, const char *send_key);

/* ---- the webhook side: what providers sign (independent of api/routes_hooks.c) ---- */
/* X-Twilio-Signature of a form POST to url with form body (provider-apis.md §4.1); new string. */
char *th_msg_twilio_signature(const char *url, const char *form, const char *token);
/* "sha256=<hex>" of HMAC-SHA256(secret, body) (X-Hub-Signature-256); new string. */
char *th_msg_hub_signature(const char *secret, const char *body);
/* A fresh P-256 key pair for the SendGrid Signed Event Webhook: returns the public key as base64
 * DER SubjectPublicKeyInfo (what the console shows) and the private key as an opaque handle. */
typedef struct th_msg_eckey th_msg_eckey;
th_msg_eckey *th_msg_eckey_new(char **public_b64);
void th_msg_eckey_free(th_msg_eckey *k);
/* base64 DER ECDSA-SHA256 signature over timestamp + body; new string. */
char *th_msg_ecdsa_sign(th_msg_eckey *k, const char *timestamp, const char *body);
