/* tests/unit/test_db.c: engine/db.c against a server that accepts connections and then says
 * nothing (a stuck server, or a proxy to one): no PostgreSQL is needed for that. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/db.h"

#define MAX_HELD 16

typedef struct silent_server {
    ev_io accept_io;
    int held[MAX_HELD]; /* accepted, never read nor answered */
    int naccepted;
} silent_server;

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    silent_server *s = ENG_CONTAINER_OF(w, silent_server, accept_io);
    int fd = accept(w->fd, NULL, NULL);
    if (fd < 0)
        return;
    if (s->naccepted < MAX_HELD)
        s->held[s->naccepted] = fd;
    else
        close(fd);
    s->naccepted++;
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static void never_called(void *arg, const eng_err *err, const PGresult *res)
{
    (void)arg;
    (void)err;
    (void)res;
    fail_msg("the query cannot have run");
}

/* libpq ignores connect_timeout in its asynchronous calls: without the connection's own timer, the
 * first attempt would wait forever for the server's first word. */
static void test_connect_attempt_times_out(void **state)
{
    (void)state;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(listen(lfd, 16), 0);
    socklen_t len = sizeof addr;
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&addr, &len), 0);

    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    silent_server srv = {0};
    ev_io_init(&srv.accept_io, on_accept, lfd, EV_READ);
    ev_io_start(loop, &srv.accept_io);
    ev_timer deadline;
    ev_timer_init(&deadline, on_deadline, 3.5, 0.);
    ev_timer_start(loop, &deadline);

    char conninfo[160];
    snprintf(conninfo, sizeof conninfo,
             "host=127.0.0.1 port=%d dbname=x user=x connect_timeout=1 sslmode=disable "
             "gssencmode=disable",
             ntohs(addr.sin_port));
    eng_db *db = eng_db_new(loop, &(eng_db_opts){.conninfo = conninfo});
    eng_db_query(db, "SELECT 1", 0, NULL, never_called, NULL);
    ev_run(loop, 0);

    /* attempts at about 0, 1.05 and 2.15 s (1 s each, then the reconnect backoff) */
    assert_true(srv.naccepted >= 3);
    assert_false(eng_db_connected(db));
    assert_int_equal(eng_db_pending(db), 1); /* still queued for the next connection */
    eng_db_free(db);
    for (int i = 0; i < srv.naccepted && i < MAX_HELD; i++)
        close(srv.held[i]);
    ev_io_stop(loop, &srv.accept_io);
    ev_loop_destroy(loop);
    close(lfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_attempt_times_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
