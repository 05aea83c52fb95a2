/* tests/integration/test_api_flood.c: a flood of slow clients does not take the API down.
 *
 * Two client addresses (127.0.0.2 and 127.0.0.3) each keep up to FLOOD_PER_ADDR connections open,
 * more than the service's whole connection cap between them, each sending a request head and then
 * its body one byte at a time, and reconnecting whenever the server closes one. Meanwhile a probe
 * from 127.0.0.1 must keep being answered promptly, and runs enqueued through the API must keep
 * finishing. What holds it: the cap per client address (the flood's excess is answered 429 at
 * once) and the request deadline, which a trickled body does not extend. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/mem.h"
#include "engine/metrics.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"

#define FLOOD_ADDRS 2
#define FLOOD_PER_ADDR 200 /* 400 in all against a cap of 256 */
#define MAX_CONNS 256
#define PER_CLIENT 64

typedef struct flood {
    int port;
    atomic_bool stop;
    atomic_long opened;
    int fds[FLOOD_ADDRS][FLOOD_PER_ADDR];
} flood;

static int flood_connect(int port, int addr_index)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    char src[24]; /* room for any int: -O0 builds check the format's worst case */
    snprintf(src, sizeof src, "127.0.0.%d", 2 + addr_index);
    struct sockaddr_in b = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &b.sin_addr);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&b, sizeof b) < 0 ||
        (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Every 50 ms: each connection sends one more byte (its head first, then an endless body);
 * one the server closed or refused is opened again. */
static void *flood_main(void *arg)
{
    flood *f = arg;
    static const char head[] = "POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n";
    size_t sent[FLOOD_ADDRS][FLOOD_PER_ADDR] = {{0}};
    for (int i = 0; i < FLOOD_ADDRS; i++)
        for (int j = 0; j < FLOOD_PER_ADDR; j++)
            f->fds[i][j] = -1;
    while (!atomic_load(&f->stop)) {
        for (int i = 0; i < FLOOD_ADDRS; i++) {
            for (int j = 0; j < FLOOD_PER_ADDR; j++) {
                int *fd = &f->fds[i][j];
                if (*fd < 0) {
                    *fd = flood_connect(f->port, i);
                    sent[i][j] = 0;
                    if (*fd >= 0)
                        atomic_fetch_add(&f->opened, 1);
                    continue;
                }
                char junk[512];
                ssize_t r = recv(*fd, junk, sizeof junk, MSG_DONTWAIT);
                bool dead = r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
                                       errno != ENOTCONN);
                if (!dead) {
                    char ch = sent[i][j] < sizeof head - 1 ? head[sent[i][j]] : 'x';
                    ssize_t n = send(*fd, &ch, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
                    if (n == 1)
                        sent[i][j]++;
                    else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
                        dead = true;
                }
                if (dead || r > 0) { /* an answer (429) or a close: start over */
                    close(*fd);
                    *fd = -1;
                }
            }
        }
        usleep(50000);
    }
    for (int i = 0; i < FLOOD_ADDRS; i++)
        for (int j = 0; j < FLOOD_PER_ADDR; j++)
            if (f->fds[i][j] >= 0)
                close(f->fds[i][j]);
    return NULL;
}

/* GET /healthz from 127.0.0.1 with a 4 s budget; returns the status (0: no answer). */
static long probe(const char *base)
{
    char url[128];
    snprintf(url, sizeof url, "%s/healthz", base);
    CURL *e = curl_easy_init();
    th_resp r = {.body = eng_xstrdup("")};
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 4000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, th_resp_collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &r);
    long status = 0;
    if (curl_easy_perform(e) == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(e);
    free(r.body);
    return status;
}

static void test_slow_client_flood(void **state)
{
    (void)state;
    th_api *a = th_api_start(&(th_api_opts){.prefix = "api_flood", .max_conns = MAX_CONNS,
                                            .max_conns_per_client = PER_CLIENT,
                                            .header_timeout_s = 5, .request_timeout_s = 8});
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/hello",
                            "{\"steps\": [{\"key\": \"greet\", \"kind\": \"transform\", "
                            "\"input\": {\"text\": \"hi {{input.n}}\"}}]}"));
    int port = atoi(strrchr(th_api_url(a), ':') + 1);
    flood *f = eng_xcalloc(1, sizeof *f);
    f->port = port;
    pthread_t thr;
    pthread_create(&thr, NULL, flood_main, f);
    usleep(500000); /* the flood holds its connections */

    long long runs[20];
    long long worst_ms = 0;
    for (int i = 0; i < 20; i++) {
        long long t0 = th_now_ms();
        long st = probe(th_api_url(a));
        if (st != 200)
            fail_msg("probe %d answered %ld after %lld ms", i, st, th_now_ms() - t0);
        char input[32];
        snprintf(input, sizeof input, "{\"n\": %d}", i);
        runs[i] = th_api_start_run(a, "hello", input);
        long long took = th_now_ms() - t0;
        worst_ms = took > worst_ms ? took : worst_ms;
        usleep(150000);
    }
    for (int i = 0; i < 20; i++) {
        json_t *run = th_api_wait_run(a, runs[i], 50, 30, NULL, NULL);
        assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
        json_decref(run);
    }
    atomic_store(&f->stop, true);
    pthread_join(thr, NULL);
    uint64_t refused =
        eng_metrics_value("flowd_http_connections_refused_total", "reason=\"per_client\"");
    fprintf(stderr,
            "flood: %ld connections opened, %llu refused per client, worst probe and enqueue"
            " %lld ms\n",
            atomic_load(&f->opened), (unsigned long long)refused, worst_ms);
    /* a probe waiting behind the flood for a free slot (held up to the 5 s header deadline) takes
     * seconds or gets no answer; answered at once, milliseconds (with room for a loaded machine) */
    assert_true(worst_ms < 2500);
    assert_true(atomic_load(&f->opened) > FLOOD_ADDRS * FLOOD_PER_ADDR);
    assert_true(refused > 0);
    free(f);
    th_api_stop(a);
}

int main(void)
{
    th_api_init();
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slow_client_flood),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
