/* tests/support/th_mockllm.h: mock OpenAI (Chat Completions) and Anthropic (Messages) servers on
 * th_mockhttp, speaking the wire formats of docs/internals/provider-apis.md §1-§2.
 *
 * Each request is answered by the next scripted answer (th_llm_push), or by the default answer
 * when the script is empty. Success answers carry the provider's full JSON (or its SSE stream when
 * the request asked for stream: true, written in pieces of a random size with ": ping" comments, so
 * events are split at arbitrary byte offsets); error answers carry the documented error body for
 * their status and code, plus the retry headers the script asks for. OpenAI answers carry all six
 * x-ratelimit-* headers; Anthropic answers the anthropic-ratelimit-* ones.
 *
 * Every request is recorded (method, target, the headers that matter, parsed body, arrival time)
 * so tests can assert what the client sent. Threads: the server runs on its own thread; every
 * function here is safe from the test thread (a mutex guards the script and the record). */
#pragma once

#include <jansson.h>
#include <stdbool.h>

typedef enum th_llm_flavor { TH_LLM_OPENAI, TH_LLM_ANTHROPIC } th_llm_flavor;

typedef struct th_llm_answer {
    int status;                 /* 0 or 200: success; else an error answer with that status */
    const char *message;        /* error message; NULL: the documented one for the code */
    const char *code;           /* OpenAI error.code / Anthropic error.type; NULL: the status's
                                   usual one ("rate_limit_exceeded", "overloaded_error", ...) */
    const char *text;           /* success text; NULL: "Hi." (or {"ok":true} in JSON mode) */
    const char *finish;         /* NULL: "stop" / "end_turn" */
    int delay_ms;               /* wait before answering */
    const char *retry_after;    /* Retry-After header value, or NULL */
    const char *retry_after_ms; /* retry-after-ms header value, or NULL */
    const char *should_retry;   /* x-should-retry header value, or NULL */
    bool exhausted;             /* rate-limit headers say the request budget is empty */
    bool stream_error;          /* streamed: an error event after the first delta */
    bool stream_cut;            /* streamed: the connection closes before the end */
    bool drop;                  /* close the connection without answering */
    bool echo;                  /* the error's message repeats the request's credential headers
                                   and target, as some servers and proxies do */
    int cache_read;             /* plain success: input tokens read from the prompt cache
                                   (OpenAI: of the 14 prompt tokens; Anthropic: besides the 12) */
} th_llm_answer;

typedef struct th_llm th_llm;

/* Starts a mock; default answer: success after 0 ms. Aborts on failure. */
th_llm *th_llm_start(th_llm_flavor flavor);
void th_llm_stop(th_llm *m); /* NULL-safe */

/* Base URL as the client configures it: OpenAI "http://127.0.0.1:P/v1" (OPENAI_BASE_URL includes
 * /v1), Anthropic "http://127.0.0.1:P" (ANTHROPIC_BASE_URL does not). Valid until stop. */
const char *th_llm_base_url(const th_llm *m);

/* Queues an answer for the next unanswered request (strings are copied). */
void th_llm_push(th_llm *m, const th_llm_answer *a);
/* Replaces the default answer (strings copied). */
void th_llm_set_default(th_llm *m, const th_llm_answer *a);

/* Requests received so far (including answered with errors). */
unsigned long th_llm_calls(th_llm *m);
/* Connections accepted so far (fewer than calls when the client reuses them). */
unsigned long th_llm_connections(th_llm *m);
/* Most requests held at once (received, answer not yet fully sent). */
unsigned long th_llm_peak_pending(th_llm *m);
/* The i-th recorded request (0-based; at most the first 4096 are kept) as
 * {"method","target","authorization","x-api-key","anthropic-version","content-type",
 *  "body": parsed JSON or null, "at_ms": monotonic arrival}; NULL when absent. New reference. */
json_t *th_llm_request(th_llm *m, unsigned long i);
