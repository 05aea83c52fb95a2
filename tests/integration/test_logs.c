/* tests/integration/test_logs.c: what flowd logs while it serves the API and runs steps parses
 * strictly as logfmt, a provider's error text cannot forge keys or lines, and every request has a
 * request id: in its X-Request-Id header, on its request log line and on the lines it causes. */
#include <curl/curl.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "engine/buf.h"
#include "engine/mem.h"
#include "steps/provider.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_logfmt.h"
#include "tests/support/th_mockllm.h"

/* The provider's error message: a quote to end the value, keys to add, a new line to start. */
#define FORGE                                                                                      \
    "boom\" lvl=error run=1 forged=yes\nts=2026-01-01T00:00:00.000Z lvl=error msg=forged "         \
    "forged=yes"

/* stderr goes to a file while a test runs, so the test can read back every line it caused. */
typedef struct capture {
    char path[64];
    int saved;
} capture;

static void capture_start(capture *c)
{
    snprintf(c->path, sizeof c->path, "/tmp/flowd-logs-test.XXXXXX");
    int fd = mkstemp(c->path);
    assert_true(fd >= 0);
    fflush(stderr);
    c->saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

/* Restores stderr; returns what was written (caller frees). */
static char *capture_end(capture *c, size_t *len)
{
    fflush(stderr);
    dup2(c->saved, STDERR_FILENO);
    close(c->saved);
    FILE *f = fopen(c->path, "rb");
    assert_non_null(f);
    eng_buf b;
    eng_buf_init(&b, 0);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        assert_int_equal(eng_buf_append(&b, chunk, n), ENG_OK);
    fclose(f);
    unlink(c->path);
    *len = b.len;
    return b.ptr ? eng_buf_take(&b, NULL) : eng_xstrdup("");
}

typedef struct hdrs {
    char request_id[80];
} hdrs;

static size_t on_header(char *p, size_t sz, size_t n, void *arg)
{
    hdrs *h = arg;
    size_t len = sz * n;
    if (len > 14 && strncasecmp(p, "X-Request-Id: ", 14) == 0) {
        size_t v = len - 14;
        while (v && (p[14 + v - 1] == '\r' || p[14 + v - 1] == '\n'))
            v--;
        snprintf(h->request_id, sizeof h->request_id, "%.*s", (int)v, p + 14);
    }
    return len;
}

/* One request (body may be NULL; request_id NULL: let the server choose); returns the status and
 * the X-Request-Id the server answered with. */
static long request(th_api *a, const char *method, const char *path, const char *body,
                    const char *request_id, hdrs *h)
{
    CURL *e = curl_easy_init();
    char *url = eng_xasprintf("%s%s", th_api_url(a), path);
    struct curl_slist *hl = curl_slist_append(NULL, "Authorization: Bearer " TH_API_KEY);
    hl = curl_slist_append(hl, "Content-Type: application/json");
    char idh[128];
    if (request_id) {
        snprintf(idh, sizeof idh, "X-Request-Id: %s", request_id);
        hl = curl_slist_append(hl, idh);
    }
    th_resp r = {.body = eng_xstrdup("")};
    memset(h, 0, sizeof *h);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hl);
    if (body)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, th_resp_collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, h);
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r.status);
    curl_easy_cleanup(e);
    curl_slist_free_all(hl);
    free(url);
    free(r.body);
    return r.status;
}

/* The parsed lines of text with msg == msg (and, when given, key == value). */
static size_t count_lines(const char *text, size_t len, const char *msg, const char *key,
                          const char *value)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t ll = (size_t)(nl - (text + i));
        th_logfmt_line l;
        char why[200];
        assert_true(th_logfmt_parse(text + i, ll, &l, why, sizeof why));
        const char *m = th_logfmt_get(&l, "msg");
        const char *v = key ? th_logfmt_get(&l, key) : NULL;
        if (strcmp(m, msg) == 0 && (!key || (v && (!value || strcmp(v, value) == 0))))
            n++;
        th_logfmt_line_free(&l);
        i += ll + 1;
    }
    return n;
}

static void test_forged_provider_error_and_request_ids(void **state)
{
    (void)state;
    th_llm *o = th_llm_start(TH_LLM_OPENAI);
    th_llm_set_default(o, &(th_llm_answer){.status = 400, .message = FORGE});
    setenv("OPENAI_API_KEY", "sk-logs-test-0123456789", 1);
    setenv("OPENAI_BASE_URL", th_llm_base_url(o), 1);
    prov_config_cache_clear();

    capture cap;
    capture_start(&cap);
    th_api *a = th_api_start(&(th_api_opts){.prefix = "logs"});
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/ask",
                            "{\"steps\": [{\"key\": \"ask\", \"kind\": \"llm\", \"retry\": "
                            "{\"max_attempts\": 1}, \"input\": {\"model\": \"m\", \"prompt\": "
                            "\"hi\"}}]}"));
    long long run = th_api_start_run(a, "ask", "{}");
    json_decref(th_api_wait_run(a, run, 20, 30, NULL, NULL));

    /* the client's own id is kept, on the answer and on the lines the request causes (the refused
     * webhook is logged from a database callback) */
    hdrs h;
    assert_int_equal(request(a, "POST", "/v1/hooks/twilio?tenant=1", "x=1", "trace-42", &h), 401);
    assert_string_equal(h.request_id, "trace-42");
    /* an id that could smuggle text into a header or a log is replaced by ours */
    assert_int_equal(request(a, "GET", "/healthz", NULL, "a b\"c", &h), 200);
    assert_int_equal(strlen(h.request_id), 16);
    hdrs mine;
    assert_int_equal(request(a, "GET", "/v1/runs/999999", NULL, NULL, &mine), 404);
    assert_int_equal(strlen(mine.request_id), 16);
    assert_string_not_equal(mine.request_id, h.request_id);
    th_api_stop(a);
    size_t len;
    char *text = capture_end(&cap, &len);

    size_t lines = 0;
    char *bad = th_logfmt_check(text, len, &lines);
    if (bad)
        fail_msg("%s", bad);
    assert_true(lines > 5);
    assert_null(strstr(text, "\nts=2026-01-01T00:00:00.000Z"));
    assert_int_equal(count_lines(text, len, "forged", NULL, NULL), 0);
    /* the provider's text is there, whole, as one value */
    assert_int_equal(count_lines(text, len, "step attempt failed", "error", NULL), 1);
    char *want = strstr(text, "step attempt failed");
    assert_non_null(want);
    assert_int_equal(count_lines(text, len, "http request", "req", "trace-42"), 1);
    assert_int_equal(count_lines(text, len, "webhook refused", "req", "trace-42"), 1);
    assert_int_equal(count_lines(text, len, "http request", "req", mine.request_id), 1);
    assert_int_equal(count_lines(text, len, "http request", "status", "404"), 1);
    for (size_t i = 0, n = 0; i < len; i += n + 1) { /* no line carries a key named forged */
        const char *nl = memchr(text + i, '\n', len - i);
        n = (size_t)(nl - (text + i));
        th_logfmt_line l;
        char why[200];
        assert_true(th_logfmt_parse(text + i, n, &l, why, sizeof why));
        assert_null(th_logfmt_get(&l, "forged"));
        const char *err = th_logfmt_get(&l, "error");
        if (strcmp(th_logfmt_get(&l, "msg"), "step attempt failed") == 0)
            assert_non_null(strstr(err, "forged=yes\nts=2026-01-01T00:00:00.000Z"));
        th_logfmt_line_free(&l);
    }
    free(text);
    th_llm_stop(o);
}

int main(void)
{
    setenv("FLOWD_LOG_LEVEL", "debug", 1);
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forged_provider_error_and_request_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
