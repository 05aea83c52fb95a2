/* tests/integration/test_metrics.c: /metrics of a server that has done some of everything (LLM
 * calls, messages, a rate-limit wait, a refused webhook, HTTP requests) passes `promtool check
 * metrics` (Prometheus's own parser and linter, Debian package prometheus) and shows the work in
 * the families an operator reads. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/mem.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

/* The value of the sample named exactly name (labels included), or -1 when absent. */
static double sample(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

static void test_promtool_on_a_loaded_server(void **state)
{
    (void)state;
    th_api *a = th_api_start(&(th_api_opts){.prefix = "metrics_promtool", .workers = 1});
    const char *db = th_api_db(a);
    long status;
    char *resp = th_api_raw(a, "PUT", "/v1/workflows/touch",
                            "{\"steps\": [{\"key\": \"text\", \"kind\": \"sms\", \"input\": {\"to\":"
                            " \"{{input.to}}\", \"from\": \"+15555550000\", \"body\": \"hi\"}},"
                            " {\"key\": \"ask\", \"kind\": \"llm\", \"needs\": [\"text\"],"
                            " \"input\": {\"provider\": \"sandbox\", \"model\": \"gpt-4o-mini\","
                            " \"prompt\": \"hello\"}}]}",
                            &status);
    assert_int_equal(status, 201);
    free(resp);
    long long run = th_api_start_run(a, "touch", "{\"to\": \"+15555550100\"}");
    json_decref(th_api_wait_run(a, run, 20, 30, NULL, NULL));
    /* one message a second under "twilio": the next run's send waits for budget */
    resp = th_api_raw(a, "PUT", "/v1/rate-limits/twilio", "{\"requests_per_s\": 0.001}", &status);
    assert_true(status == 201 || status == 200);
    free(resp);
    th_api_start_run(a, "touch", "{\"to\": \"+15555550101\"}");
    th_api_start_run(a, "touch", "{\"to\": \"+15555550102\"}");
    assert_true(th_engine_wait(db,
                               "SELECT count(*) > 0 FROM steps WHERE key = 'text' AND"
                               " state = 'ready' AND attempts = 0 AND run_at > now()",
                               30));
    /* a webhook that does not verify */
    resp = th_api_raw(a, "POST", "/v1/hooks/twilio?tenant=1", NULL, &status);
    free(resp);

    char *text = th_api_raw(a, "GET", "/metrics", NULL, &status);
    assert_int_equal(status, 200);
    char path[] = "/tmp/flowd-metrics-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char *cmd = eng_xasprintf("promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[4096] = "";
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int rc = pclose(p);
    free(cmd);
    unlink(path);
    if (rc != 0)
        fail_msg("promtool check metrics (exit %d; promtool comes with the Debian package "
                 "prometheus, which scripts/deps installs):\n%s",
                 WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, out);

    static const char *const moved[] = {
        "flowd_sends_total{channel=\"sms\",outcome=\"accepted\"}",
        "flowd_rate_limit_waits_total{limit=\"twilio\"}",
        "flowd_webhook_verification_failures_total{provider=\"twilio\"}",
        "flowd_db_connections",
        "flowd_db_round_trip_seconds_count",
        "flowd_step_start_lag_seconds_count",
        "flowd_http_request_duration_seconds_count{method=\"PUT\",route=\"/v1/workflows/{}\"}",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(moved); i++)
        if (!(sample(text, moved[i]) > 0))
            fail_msg("/metrics: %s is %g, expected above 0", moved[i], sample(text, moved[i]));
    assert_true(sample(text, "flowd_sse_streams") == 0);
    assert_non_null(strstr(text, "\nflowd_build_info{version=\""));
    free(text);
    th_api_stop(a);
}

int main(void)
{
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_promtool_on_a_loaded_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
