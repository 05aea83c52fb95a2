/* engine/metrics.h: process-wide counters and histograms for /metrics (Prometheus text format).
 *
 * Every recording function is safe from any thread at any time and never blocks for long: values are
 * atomics, and only the first sighting of a new label set takes a mutex. Label sets are bounded by
 * design (step kinds, outcomes, routes, statuses, providers); past MET_SERIES_MAX per family, new
 * label sets are counted under the label value "other" rather than dropped.
 *
 * Strings passed in are borrowed for the call only (copied when a series is created). NULL label
 * values are recorded as "unknown". */
#pragma once

#include <stdint.h>

#include "engine/buf.h"

/* A worker claimed a step of this kind, lag_ms after it was due (negative: not known). */
void eng_metrics_step_claimed(const char *kind, int64_t lag_ms);
/* A claimed step reached an outcome ("ok", "fail", "skip", "snooze", "wait", "map", "window",
 * "cancelled") after latency_ms from its claim; feeds flowd_steps_finished_total and the
 * flowd_step_duration_seconds histogram. */
void eng_metrics_step_finished(const char *kind, const char *outcome, int64_t latency_ms);
/* An outbound provider call failed (provider: "openai", "twilio", ...; code: a short machine name
 * such as "http_429", "timeout", "connect"). */
void eng_metrics_provider_error(const char *provider, const char *code);
/* An outbound provider call ended after ms (negative: not measured) with an HTTP status (0: no
 * answer). */
void eng_metrics_provider_request(const char *provider, long status, double ms);
/* An LLM call was recorded: its tokens (cached_input is part of input) and its cost. */
void eng_metrics_llm_usage(const char *provider, const char *model, int64_t input,
                           int64_t output, int64_t cached_input, double cost_usd);
/* A message reached an outcome on a channel (email, sms, whatsapp): accepted, failed, unknown,
 * suppressed, skipped, or a delivery state a webhook reported. */
void eng_metrics_send(const char *channel, const char *outcome);
/* A step found no budget in the named rate limit and waits. */
void eng_metrics_rate_limit_wait(const char *name);
/* The API answered a request, secs after it arrived. route is the matched pattern
 * ("/v1/runs/{id}") or NULL when no route matched. */
void eng_metrics_http_request(const char *method, const char *route, int status, double secs);
/* The API refused a connection ("per_client") or could not accept one ("descriptors"). */
void eng_metrics_http_refused(const char *reason);
/* A Server-Sent Events stream opened (+1) or closed (-1). */
void eng_metrics_sse_streams(int delta);
/* An inbound webhook of provider failed its signature check. */
void eng_metrics_webhook_rejected(const char *provider);
/* A pooled database connection came up (+1) or went down (-1). */
void eng_metrics_db_connections(int delta);
/* The API sent a read to server ("standby" or "primary") for reason: on the standby "current" (it
 * was known to be fresh enough) or "waited" (after the read waited for it to catch up); on the
 * primary "lag" (the standby is not known to be within the lag bound), "behind" (it did not catch up with what the
 * tenant saw within the wait), "down" (no connection to it up), "error" (the statement failed there),
 * "missing" (not found there: asked again on the primary) or "not_standby" (the read server is not
 * in recovery). Counted only where a standby is configured. */
void eng_metrics_api_read(const char *server, const char *reason);
/* A statement's round trip took ms. */
void eng_metrics_db_round_trip(double ms);

/* A webhook attempt was settled: outcome "sent", "retry", "failed" (the schedule ran out),
 * "disabled" (its endpoint was disabled: 410 or 5 days of failures) or "stale". */
void eng_metrics_webhook(const char *outcome);
/* A webhook was delivered lag_ms after the change it reports. */
void eng_metrics_webhook_lag(int64_t lag_ms);
/* A schedule's tick started a run lag_ms after the tick (flowd_schedule_fires_total and the
 * flowd_schedule_lag_seconds histogram). */
void eng_metrics_schedule_fired(int64_t lag_ms);
/* A schedule passed over ticks ticks for reason ("missed", "overlap", "duplicate",
 * "invalid_input", "workflow_missing", "invalid_schedule", "quota"). */
void eng_metrics_schedule_skipped(const char *reason, uint64_t ticks);

/* Appends the text exposition of every family (HELP, TYPE, samples) to b, with flowd_build_info
 * and the process_* families of the standard clients. */
ENG_MUST_CHECK eng_rc eng_metrics_render(eng_buf *b);

/* The current value of one counter sample, for tests: family is the metric name
 * ("flowd_step_claims_total", "flowd_steps_finished_total", "flowd_step_duration_seconds_count",
 * "flowd_provider_errors_total", "flowd_http_requests_total",
 * "flowd_http_connections_refused_total", "flowd_schedule_fires_total",
 * "flowd_schedule_skips_total", "flowd_schedule_lag_seconds_count",
 * "flowd_webhook_attempts_total", "flowd_webhook_delivery_lag_seconds_count") and labels the
 * rendered label text
 * without braces, as in the exposition: kind="transform",outcome="ok". 0 when absent. */
uint64_t eng_metrics_value(const char *family, const char *labels);
