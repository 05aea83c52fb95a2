/* engine/metrics.c: see metrics.h.
 *
 * Each family is a fixed open-addressed table of series keyed by their rendered label text. Slots
 * are filled once and never removed, so a reader can probe without a lock: an empty slot (ready is
 * false) ends the probe, and a miss re-probes under the family's mutex before filling a slot. The
 * release store of ready publishes the label text to the lock-free readers. */
#include "engine/metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define MET_SERIES_MAX 256
#define MET_LABELS_MAX 192

/* Step latency buckets in seconds: transforms take milliseconds, LLM calls seconds to minutes. */
static const double met_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                    1,     2.5,  5,     10,   30,  60,  300};
#define MET_NBOUNDS (sizeof met_bounds / sizeof met_bounds[0])

typedef struct met_series {
    atomic_bool ready;
    char labels[MET_LABELS_MAX];
    atomic_uint_least64_t value;                    /* counters */
    atomic_uint_least64_t sum_us;                   /* histograms: sum of observations */
    atomic_uint_least64_t buckets[MET_NBOUNDS + 1]; /* histograms: per bucket, last is +Inf;
                                                       cumulated when rendered */
} met_series;

typedef struct met_family {
    const char *name;
    const char *help;
    bool histogram;
    pthread_mutex_t mu; /* serializes filling slots */
    int used;           /* slots filled; under mu */
    met_series series[MET_SERIES_MAX];
} met_family;

static met_family met_claims = {
    .name = "flowd_step_claims_total",
    .help = "Steps claimed by this process's workers, by kind.",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_finished = {
    .name = "flowd_steps_finished_total",
    .help = "Step attempts that reached an outcome in this process, by kind and outcome.",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_latency = {
    .name = "flowd_step_duration_seconds",
    .help = "Time from claim to outcome of step attempts, by kind.",
    .histogram = true,
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_provider = {
    .name = "flowd_provider_errors_total",
    .help = "Failed outbound provider calls, by provider and error code.",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_http = {
    .name = "flowd_http_requests_total",
    .help = "API requests answered, by method, route and status.",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

static met_family met_refused = {
    .name = "flowd_http_connections_refused_total",
    .help = "API connections refused or not accepted, by reason (per_client: the client address "
            "held its share; descriptors: the process ran out of file descriptors).",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

static met_family met_sched_fires = {
    .name = "flowd_schedule_fires_total",
    .help = "Runs started by schedules' ticks in this process.",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_sched_skips = {
    .name = "flowd_schedule_skips_total",
    .help = "Schedule ticks passed over in this process, by reason (missed: catch-up policy; "
            "overlap: overlap policy; invalid_input, workflow_missing, invalid_schedule: the fire "
            "failed; "
            "duplicate: the tick's run existed).",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_sched_lag = {
    .name = "flowd_schedule_lag_seconds",
    .help = "Time from a schedule's tick to its run's creation.",
    .histogram = true,
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

static met_family *const met_families[] = {&met_claims,      &met_finished,    &met_latency,
                                           &met_provider,    &met_http,        &met_refused,
                                           &met_sched_fires, &met_sched_skips, &met_sched_lag};

static uint64_t met_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Probes for labels; returns the slot, or NULL at the first empty slot (or after a full lap). */
static met_series *met_probe(met_family *f, const char *labels, size_t *empty)
{
    size_t start = (size_t)(met_hash(labels) % MET_SERIES_MAX);
    for (size_t i = 0; i < MET_SERIES_MAX; i++) {
        size_t idx = (start + i) % MET_SERIES_MAX;
        met_series *s = &f->series[idx];
        if (!atomic_load_explicit(&s->ready, memory_order_acquire)) {
            if (empty)
                *empty = idx;
            return NULL;
        }
        if (strcmp(s->labels, labels) == 0)
            return s;
    }
    return NULL;
}

static met_series *met_series_get(met_family *f, const char *labels)
{
    met_series *s = met_probe(f, labels, NULL);
    if (s)
        return s;
    pthread_mutex_lock(&f->mu);
    size_t empty = MET_SERIES_MAX;
    /* one slot stays free for the overflow series, so probes always end */
    if (f->used >= MET_SERIES_MAX - 2)
        labels = "overflow=\"true\"";
    s = met_probe(f, labels, &empty);
    if (!s && empty < MET_SERIES_MAX) {
        s = &f->series[empty];
        snprintf(s->labels, sizeof s->labels, "%s", labels);
        f->used++;
        atomic_store_explicit(&s->ready, true, memory_order_release);
    }
    pthread_mutex_unlock(&f->mu);
    return s;
}

/* Appends name="value" (value escaped as the exposition format wants) to out. */
static void met_label(char *out, size_t outlen, const char *name, const char *value)
{
    size_t off = strlen(out);
    if (!value)
        value = "unknown";
    int n = snprintf(out + off, outlen - off, "%s%s=\"", off ? "," : "", name);
    if (n < 0 || (size_t)n >= outlen - off)
        return;
    off += (size_t)n;
    for (const char *p = value; *p && off + 3 < outlen; p++) {
        if (*p == '\\' || *p == '"') {
            out[off++] = '\\';
            out[off++] = *p;
        } else if (*p == '\n') {
            out[off++] = '\\';
            out[off++] = 'n';
        } else {
            out[off++] = *p;
        }
    }
    out[off++] = '"';
    out[off] = '\0';
}

static void met_add(met_family *f, const char *labels, uint64_t n)
{
    met_series *s = met_series_get(f, labels);
    if (s)
        atomic_fetch_add_explicit(&s->value, n, memory_order_relaxed);
}

static void met_count(met_family *f, const char *labels)
{
    met_add(f, labels, 1);
}

static void met_observe(met_series *h, int64_t latency_ms)
{
    if (latency_ms < 0)
        latency_ms = 0;
    double secs = (double)latency_ms / 1000.0;
    size_t b = 0;
    while (b < MET_NBOUNDS && secs > met_bounds[b])
        b++;
    atomic_fetch_add_explicit(&h->buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (uint64_t)latency_ms * 1000, memory_order_relaxed);
}

void eng_metrics_step_claimed(const char *kind)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "kind", kind);
    met_count(&met_claims, labels);
}

void eng_metrics_step_finished(const char *kind, const char *outcome, int64_t latency_ms)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "kind", kind);
    met_series *h = met_series_get(&met_latency, labels);
    met_label(labels, sizeof labels, "outcome", outcome);
    met_count(&met_finished, labels);
    if (h)
        met_observe(h, latency_ms);
}

void eng_metrics_schedule_fired(int64_t lag_ms)
{
    met_count(&met_sched_fires, "");
    met_series *h = met_series_get(&met_sched_lag, "");
    if (h)
        met_observe(h, lag_ms);
}

void eng_metrics_schedule_skipped(const char *reason, uint64_t ticks)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "reason", reason);
    met_add(&met_sched_skips, labels, ticks);
}

void eng_metrics_provider_error(const char *provider, const char *code)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "provider", provider);
    met_label(labels, sizeof labels, "code", code);
    met_count(&met_provider, labels);
}

void eng_metrics_http_request(const char *method, const char *route, int status)
{
    char labels[MET_LABELS_MAX] = "", status_s[16];
    snprintf(status_s, sizeof status_s, "%d", status);
    met_label(labels, sizeof labels, "method", method);
    met_label(labels, sizeof labels, "route", route ? route : "unmatched");
    met_label(labels, sizeof labels, "status", status_s);
    met_count(&met_http, labels);
}

void eng_metrics_http_refused(const char *reason)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "reason", reason);
    met_count(&met_refused, labels);
}

static eng_rc met_render_histogram(eng_buf *b, const met_family *f, met_series *s)
{
    const char *sep = s->labels[0] ? "," : "";
    uint64_t cum = 0;
    eng_rc rc = ENG_OK;
    for (size_t i = 0; i <= MET_NBOUNDS && rc == ENG_OK; i++) {
        cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        if (i < MET_NBOUNDS)
            rc = eng_buf_appendf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", f->name, s->labels, sep,
                                 met_bounds[i], (unsigned long long)cum);
        else
            rc = eng_buf_appendf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", f->name, s->labels, sep,
                                 (unsigned long long)cum);
    }
    if (rc == ENG_OK)
        rc = eng_buf_appendf(
            b, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", f->name, s->labels,
            (double)atomic_load_explicit(&s->sum_us, memory_order_relaxed) / 1e6, f->name,
            s->labels, (unsigned long long)cum);
    return rc;
}

eng_rc eng_metrics_render(eng_buf *b)
{
    eng_rc rc = ENG_OK;
    for (size_t fi = 0; fi < sizeof met_families / sizeof met_families[0] && rc == ENG_OK; fi++) {
        met_family *f = met_families[fi];
        rc = eng_buf_appendf(b, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                             f->histogram ? "histogram" : "counter");
        for (size_t i = 0; i < MET_SERIES_MAX && rc == ENG_OK; i++) {
            met_series *s = &f->series[i];
            if (!atomic_load_explicit(&s->ready, memory_order_acquire))
                continue;
            if (f->histogram)
                rc = met_render_histogram(b, f, s);
            else
                rc = eng_buf_appendf(
                    b, "%s{%s} %llu\n", f->name, s->labels,
                    (unsigned long long)atomic_load_explicit(&s->value, memory_order_relaxed));
        }
    }
    return rc;
}

uint64_t eng_metrics_value(const char *family, const char *labels)
{
    for (size_t fi = 0; fi < sizeof met_families / sizeof met_families[0]; fi++) {
        met_family *f = met_families[fi];
        size_t n = strlen(f->name);
        if (strncmp(family, f->name, n) != 0)
            continue;
        bool count = f->histogram && strcmp(family + n, "_count") == 0;
        if (family[n] && !count)
            continue;
        met_series *s = met_probe(f, labels, NULL);
        if (!s)
            return 0;
        if (!count)
            return atomic_load_explicit(&s->value, memory_order_relaxed);
        uint64_t total = 0;
        for (size_t i = 0; i <= MET_NBOUNDS; i++)
            total += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        return total;
    }
    return 0;
}
