/* engine/metrics.c: see metrics.h.
 *
 * Each family is a fixed open-addressed table of series keyed by their rendered label text. Slots
 * are filled once and never removed, so a reader can probe without a lock: an empty slot (ready is
 * false) ends the probe, and a miss re-probes under the family's mutex before filling a slot. The
 * release store of ready publishes the label text to the lock-free readers. */
#include "engine/metrics.h"

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define MET_SERIES_MAX 256
#define MET_LABELS_MAX 192
#define MET_BOUNDS_MAX 16

typedef enum met_type { MET_COUNTER, MET_GAUGE, MET_HISTOGRAM } met_type;

/* Step latency buckets in seconds: transforms take milliseconds, LLM calls seconds to minutes. */
static const double met_step_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                         1,     2.5,  5,     10,   30,  60,  300};
/* Requests answered from memory or one statement: HTTP requests, database round trips. */
static const double met_fast_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.1,    0.25,  0.5,    1,     2.5,  5,     10};
/* Provider calls: messaging APIs answer in milliseconds, LLMs in seconds to minutes. */
static const double met_call_bounds[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300};
/* Webhook delivery lag: milliseconds when the receiver is up, up to a day of retries. */
static const double met_webhook_bounds[] = {0.05, 0.1, 0.25, 0.5,  1,     2.5,   5,
                                            30,   60,  300,  1800, 7200, 36000, 86400};
/* Due to started: milliseconds on an idle engine, up to hours behind a backlog. */
static const double met_lag_bounds[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5,
                                        10,    30,    60,   300,  900, 3600};

typedef struct met_series {
    atomic_bool ready;
    char labels[MET_LABELS_MAX];
    atomic_uint_least64_t value;                     /* counters; gauges (two's complement) */
    atomic_uint_least64_t sum_us;                    /* histograms: sum of observations */
    atomic_uint_least64_t buckets[MET_BOUNDS_MAX + 1]; /* histograms: per bucket, the one past
                                                        the bounds is +Inf; cumulated when
                                                        rendered */
} met_series;

typedef struct met_family {
    const char *name;
    const char *help;
    met_type type;
    const double *bounds; /* histograms */
    size_t nbounds;
    double scale;         /* counters kept in integer units of this size (0: 1) */
    pthread_mutex_t mu;   /* serializes filling slots */
    int used;             /* slots filled; under mu */
    met_series series[MET_SERIES_MAX];
} met_family;

#define MET_HIST(b) .type = MET_HISTOGRAM, .bounds = (b), .nbounds = sizeof(b) / sizeof((b)[0])

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
    MET_HIST(met_step_bounds),
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_lag = {
    .name = "flowd_step_start_lag_seconds",
    .help = "Time from a step being due (its needs done) to a worker starting it, for first "
            "attempts of steps due as soon as they are ready; delayed or scheduled steps and "
            "retries are not observed.",
    MET_HIST(met_lag_bounds),
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_provider = {
    .name = "flowd_provider_errors_total",
    .help = "Failed outbound provider calls, by provider and error code.",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_prov_requests = {
    .name = "flowd_provider_requests_total",
    .help = "Outbound provider calls that ended, by provider and status (2xx, 3xx, 4xx, 429, 5xx, "
            "or error: no answer).",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_prov_latency = {
    .name = "flowd_provider_request_duration_seconds",
    .help = "Duration of outbound provider calls, by provider and status.",
    MET_HIST(met_call_bounds),
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_llm_tokens = {
    .name = "flowd_llm_tokens_total",
    .help = "LLM tokens of the calls this process made (answers replayed from their record are "
            "not calls), by provider, model and direction (input, output; cached_input is the "
            "part of input read from a cache).",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_llm_cost = {
    .name = "flowd_llm_cost_usd_total",
    .help = "Cost in USD of the LLM calls this process made, by provider and model, at the "
            "shipped list prices (GET /v1/usage applies the tenant's own prices too).",
    .scale = 1e-9,
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_sends = {
    .name = "flowd_sends_total",
    .help = "Messages by channel and outcome: accepted, failed, unknown, suppressed, skipped "
            "(from this process's sends) and delivered, read, bounced, undelivered (from "
            "delivery webhooks this process received).",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_rl_waits = {
    .name = "flowd_rate_limit_waits_total",
    .help = "Steps that found no budget in a named rate limit and waited, by limit name.",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_http = {
    .name = "flowd_http_requests_total",
    .help = "API requests answered, by method, route and status.",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_http_latency = {
    .name = "flowd_http_request_duration_seconds",
    .help = "Time from a request's arrival to its answer, by method and route.",
    MET_HIST(met_fast_bounds),
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_refused = {
    .name = "flowd_http_connections_refused_total",
    .help = "API connections refused or not accepted, by reason (per_client: the client address "
            "held its share; descriptors: the process ran out of file descriptors).",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_sse = {
    .name = "flowd_sse_streams",
    .help = "Server-Sent Events streams open now.",
    .type = MET_GAUGE,
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_hook_rejected = {
    .name = "flowd_webhook_verification_failures_total",
    .help = "Inbound webhooks refused because their signature (or token) did not verify, by "
            "provider.",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_db_conns = {
    .name = "flowd_db_connections",
    .help = "Database connections of this process's pools that are connected now.",
    .type = MET_GAUGE,
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_api_reads = {
    .name = "flowd_api_reads_total",
    .help = "API reads routed with a standby configured, by server (standby, primary) and reason "
            "(standby: current, waited; primary: lag, behind, down, error, missing, not_standby).",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_db_latency = {
    .name = "flowd_db_round_trip_seconds",
    .help = "Time from sending a statement to its last result, on this process's pools.",
    MET_HIST(met_fast_bounds),
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
    MET_HIST(met_lag_bounds),
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

static met_family met_webhook = {
    .name = "flowd_webhook_attempts_total",
    .help = "Webhook delivery attempts settled by this process, by outcome (sent, retry, failed: "
            "the retry schedule ran out, disabled: the endpoint was disabled, stale: another "
            "process had taken the delivery over).",
    .mu = PTHREAD_MUTEX_INITIALIZER,
};
static met_family met_webhook_lag = {
    .name = "flowd_webhook_delivery_lag_seconds",
    .help = "Time from the change a webhook reports to its successful delivery.",
    MET_HIST(met_webhook_bounds),
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

static met_family *const met_families[] = {
    &met_claims,        &met_finished,     &met_latency,     &met_lag,          &met_provider,
    &met_prov_requests, &met_prov_latency, &met_llm_tokens,  &met_llm_cost,     &met_sends,
    &met_rl_waits,      &met_http,         &met_http_latency, &met_refused,     &met_sse,
    &met_hook_rejected, &met_db_conns,     &met_db_latency,  &met_sched_fires,  &met_sched_skips,
    &met_sched_lag,     &met_webhook,      &met_webhook_lag,
    &met_api_reads};

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

static void met_observe(met_family *f, const char *labels, double secs)
{
    met_series *h = met_series_get(f, labels);
    if (!h)
        return;
    if (!(secs >= 0))
        secs = 0;
    size_t b = 0;
    while (b < f->nbounds && secs > f->bounds[b])
        b++;
    atomic_fetch_add_explicit(&h->buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (uint64_t)(secs * 1e6), memory_order_relaxed);
}

void eng_metrics_step_claimed(const char *kind, int64_t lag_ms)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "kind", kind);
    met_count(&met_claims, labels);
    if (lag_ms >= 0)
        met_observe(&met_lag, "", (double)lag_ms / 1000.0);
}

void eng_metrics_step_finished(const char *kind, const char *outcome, int64_t latency_ms)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "kind", kind);
    met_observe(&met_latency, labels, (double)(latency_ms < 0 ? 0 : latency_ms) / 1000.0);
    met_label(labels, sizeof labels, "outcome", outcome);
    met_count(&met_finished, labels);
}

void eng_metrics_webhook(const char *outcome)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "outcome", outcome);
    met_count(&met_webhook, labels);
}

void eng_metrics_webhook_lag(int64_t lag_ms)
{
    met_observe(&met_webhook_lag, "", (double)(lag_ms < 0 ? 0 : lag_ms) / 1000.0);
}

void eng_metrics_schedule_fired(int64_t lag_ms)
{
    met_count(&met_sched_fires, "");
    met_observe(&met_sched_lag, "", (double)(lag_ms < 0 ? 0 : lag_ms) / 1000.0);
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

void eng_metrics_provider_request(const char *provider, long status, double ms)
{
    char labels[MET_LABELS_MAX] = "", cls[8] = "error";
    if (status == 429)
        snprintf(cls, sizeof cls, "429");
    else if (status >= 100 && status < 600)
        snprintf(cls, sizeof cls, "%ldxx", status / 100);
    met_label(labels, sizeof labels, "provider", provider);
    met_label(labels, sizeof labels, "status", cls);
    met_count(&met_prov_requests, labels);
    if (ms >= 0)
        met_observe(&met_prov_latency, labels, ms / 1000.0);
}

void eng_metrics_llm_usage(const char *provider, const char *model, int64_t input,
                           int64_t output, int64_t cached_input, double cost_usd)
{
    char base[MET_LABELS_MAX] = "";
    met_label(base, sizeof base, "provider", provider);
    met_label(base, sizeof base, "model", model);
    static const char *const dirs[] = {"input", "output", "cached_input"};
    const int64_t n[] = {input, output, cached_input};
    for (size_t i = 0; i < 3; i++) {
        char labels[MET_LABELS_MAX];
        snprintf(labels, sizeof labels, "%s", base);
        met_label(labels, sizeof labels, "direction", dirs[i]);
        if (n[i] > 0 || i < 2)
            met_add(&met_llm_tokens, labels, n[i] > 0 ? (uint64_t)n[i] : 0);
    }
    if (cost_usd > 0)
        met_add(&met_llm_cost, base, (uint64_t)(cost_usd / met_llm_cost.scale + 0.5));
    else
        met_add(&met_llm_cost, base, 0);
}

void eng_metrics_send(const char *channel, const char *outcome)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "channel", channel);
    met_label(labels, sizeof labels, "outcome", outcome);
    met_count(&met_sends, labels);
}

void eng_metrics_rate_limit_wait(const char *name)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "limit", name);
    met_count(&met_rl_waits, labels);
}

void eng_metrics_http_request(const char *method, const char *route, int status, double secs)
{
    char labels[MET_LABELS_MAX] = "", status_s[16];
    snprintf(status_s, sizeof status_s, "%d", status);
    met_label(labels, sizeof labels, "method", method);
    met_label(labels, sizeof labels, "route", route ? route : "unmatched");
    met_observe(&met_http_latency, labels, secs);
    met_label(labels, sizeof labels, "status", status_s);
    met_count(&met_http, labels);
}

void eng_metrics_http_refused(const char *reason)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "reason", reason);
    met_count(&met_refused, labels);
}

void eng_metrics_api_read(const char *server, const char *reason)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "server", server);
    met_label(labels, sizeof labels, "reason", reason);
    met_count(&met_api_reads, labels);
}

void eng_metrics_sse_streams(int delta)
{
    met_add(&met_sse, "", (uint64_t)(int64_t)delta);
}

void eng_metrics_webhook_rejected(const char *provider)
{
    char labels[MET_LABELS_MAX] = "";
    met_label(labels, sizeof labels, "provider", provider);
    met_count(&met_hook_rejected, labels);
}

void eng_metrics_db_connections(int delta)
{
    met_add(&met_db_conns, "", (uint64_t)(int64_t)delta);
}

void eng_metrics_db_round_trip(double ms)
{
    met_observe(&met_db_latency, "", ms / 1000.0);
}

/* "{labels}" or "" for a series without labels; out must hold MET_LABELS_MAX + 2. */
static const char *met_braced(char *out, const met_series *s)
{
    if (!s->labels[0])
        return "";
    snprintf(out, MET_LABELS_MAX + 2, "{%s}", s->labels);
    return out;
}

static eng_rc met_render_histogram(eng_buf *b, const met_family *f, met_series *s)
{
    const char *sep = s->labels[0] ? "," : "";
    char braced[MET_LABELS_MAX + 2];
    uint64_t cum = 0;
    eng_rc rc = ENG_OK;
    for (size_t i = 0; i <= f->nbounds && rc == ENG_OK; i++) {
        cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        if (i < f->nbounds)
            rc = eng_buf_appendf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", f->name, s->labels, sep,
                                 f->bounds[i], (unsigned long long)cum);
        else
            rc = eng_buf_appendf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", f->name, s->labels, sep,
                                 (unsigned long long)cum);
    }
    const char *lb = met_braced(braced, s);
    if (rc == ENG_OK)
        rc = eng_buf_appendf(
            b, "%s_sum%s %.6f\n%s_count%s %llu\n", f->name, lb,
            (double)atomic_load_explicit(&s->sum_us, memory_order_relaxed) / 1e6, f->name, lb,
            (unsigned long long)cum);
    return rc;
}

static eng_rc met_render_value(eng_buf *b, const met_family *f, met_series *s)
{
    char braced[MET_LABELS_MAX + 2];
    uint64_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    const char *lb = met_braced(braced, s);
    if (f->type == MET_GAUGE)
        return eng_buf_appendf(b, "%s%s %lld\n", f->name, lb, (long long)(int64_t)v);
    if (f->scale > 0)
        return eng_buf_appendf(b, "%s%s %.9f\n", f->name, lb, (double)v * f->scale);
    return eng_buf_appendf(b, "%s%s %llu\n", f->name, lb, (unsigned long long)v);
}

/* process_* of the standard client libraries, from /proc/self (Linux). */
static eng_rc met_render_process(eng_buf *b)
{
    long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    unsigned long utime = 0, stime = 0, vsize = 0;
    unsigned long long start = 0;
    long rss = 0;
    FILE *f = fopen("/proc/self/stat", "r");
    bool stat_ok = false;
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
        /* fields after the name: state(3) ... utime(14) stime(15) ... starttime(22) vsize(23)
         * rss(24) */
        stat_ok = p && sscanf(p + 2,
                              "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d "
                              "%*d %*d %*d %llu %lu %ld",
                              &utime, &stime, &start, &vsize, &rss) == 5;
    }
    double boot = 0;
    f = fopen("/proc/stat", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "btime %lf", &boot) == 1)
                break;
        fclose(f);
    }
    int fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        for (struct dirent *e; (e = readdir(d));)
            fds += e->d_name[0] != '.';
        closedir(d);
        fds--; /* the directory's own descriptor */
    }
    struct rlimit lim;
    double max_fds = getrlimit(RLIMIT_NOFILE, &lim) == 0 ? (double)lim.rlim_cur : 0;
    eng_rc rc = ENG_OK;
    if (stat_ok && ticks > 0)
        rc = eng_buf_appendf(
            b,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.2f\n"
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %lld\n"
            "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
            "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes %lu\n"
            "# HELP process_start_time_seconds Start time of the process since unix epoch in "
            "seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.2f\n",
            (double)(utime + stime) / (double)ticks, (long long)rss * page, vsize,
            boot + (double)start / (double)ticks);
    if (rc == ENG_OK && fds >= 0)
        rc = eng_buf_appendf(b,
                             "# HELP process_open_fds Number of open file descriptors.\n"
                             "# TYPE process_open_fds gauge\nprocess_open_fds %d\n"
                             "# HELP process_max_fds Maximum number of open file descriptors.\n"
                             "# TYPE process_max_fds gauge\nprocess_max_fds %.0f\n",
                             fds, max_fds);
    return rc;
}

eng_rc eng_metrics_render(eng_buf *b)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    eng_rc rc = eng_buf_appendf(b,
                                "# HELP flowd_build_info The flowd build serving this process.\n"
                                "# TYPE flowd_build_info gauge\n"
                                "flowd_build_info{version=\"%s\"} 1\n",
                                FLOWD_VERSION);
    for (size_t fi = 0; fi < sizeof met_families / sizeof met_families[0] && rc == ENG_OK; fi++) {
        met_family *f = met_families[fi];
        rc = eng_buf_appendf(b, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                             types[f->type]);
        /* a family without labels always has its one series, so it shows before anything
         * happened (a gauge at 0, a histogram with empty buckets) */
        if (rc == ENG_OK && (f->type == MET_GAUGE || f == &met_lag || f == &met_db_latency))
            (void)met_series_get(f, "");
        for (size_t i = 0; i < MET_SERIES_MAX && rc == ENG_OK; i++) {
            met_series *s = &f->series[i];
            if (!atomic_load_explicit(&s->ready, memory_order_acquire))
                continue;
            rc = f->type == MET_HISTOGRAM ? met_render_histogram(b, f, s)
                                          : met_render_value(b, f, s);
        }
    }
    if (rc == ENG_OK)
        rc = met_render_process(b);
    return rc;
}

uint64_t eng_metrics_value(const char *family, const char *labels)
{
    for (size_t fi = 0; fi < sizeof met_families / sizeof met_families[0]; fi++) {
        met_family *f = met_families[fi];
        size_t n = strlen(f->name);
        if (strncmp(family, f->name, n) != 0)
            continue;
        bool count = f->type == MET_HISTOGRAM && strcmp(family + n, "_count") == 0;
        if (family[n] && !count)
            continue;
        met_series *s = met_probe(f, labels, NULL);
        if (!s)
            return 0;
        if (!count)
            return atomic_load_explicit(&s->value, memory_order_relaxed);
        uint64_t total = 0;
        for (size_t i = 0; i <= f->nbounds; i++)
            total += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        return total;
    }
    return 0;
}
