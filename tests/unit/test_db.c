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
#include <netinet/tcp.h>
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

/* A silent server on an ephemeral loopback port, watched by a fresh loop. */
typedef struct fx {
    struct ev_loop *loop;
    int lfd, port;
    silent_server srv;
} fx;

static void fx_start(fx *f)
{
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(f->lfd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(listen(f->lfd, 16), 0);
    socklen_t len = sizeof addr;
    assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&addr, &len), 0);
    f->port = ntohs(addr.sin_port);
    f->loop = ev_loop_new(EVFLAG_AUTO);
    f->srv = (silent_server){0};
    ev_io_init(&f->srv.accept_io, on_accept, f->lfd, EV_READ);
    ev_io_start(f->loop, &f->srv.accept_io);
}

static void fx_stop(fx *f)
{
    for (int i = 0; i < f->srv.naccepted && i < MAX_HELD; i++)
        close(f->srv.held[i]);
    ev_io_stop(f->loop, &f->srv.accept_io);
    ev_loop_destroy(f->loop);
    close(f->lfd);
}

/* libpq ignores connect_timeout in its asynchronous calls: without the connection's own timer, the
 * first attempt would wait forever for the server's first word. */
static void test_connect_attempt_times_out(void **state)
{
    (void)state;
    fx f;
    fx_start(&f);
    ev_timer deadline;
    ev_timer_init(&deadline, on_deadline, 3.5, 0.);
    ev_timer_start(f.loop, &deadline);

    char conninfo[160];
    snprintf(conninfo, sizeof conninfo,
             "host=127.0.0.1 port=%d dbname=x user=x connect_timeout=1 sslmode=disable "
             "gssencmode=disable",
             f.port);
    eng_db *db = eng_db_new(f.loop, &(eng_db_opts){.conninfo = conninfo});
    eng_db_query(db, "SELECT 1", 0, NULL, never_called, NULL);
    ev_run(f.loop, 0);

    /* attempts at about 0, 1.05 and 2.15 s (1 s each, then the reconnect backoff) */
    assert_true(f.srv.naccepted >= 3);
    assert_false(eng_db_connected(db));
    assert_int_equal(eng_db_pending(db), 1); /* still queued for the next connection */
    eng_db_free(db);
    fx_stop(&f);
}

/* This process's end of the connection the server accepted as fd: the descriptor (libpq's socket)
 * whose local address is the accepted connection's peer. */
static int client_end(int accepted)
{
    struct sockaddr_in peer, local;
    socklen_t len = sizeof peer;
    assert_int_equal(getpeername(accepted, (struct sockaddr *)&peer, &len), 0);
    for (int fd = 3; fd < 1024; fd++) {
        len = sizeof local;
        if (fd != accepted && getsockname(fd, (struct sockaddr *)&local, &len) == 0 &&
            local.sin_family == AF_INET && local.sin_port == peer.sin_port)
            return fd;
    }
    fail_msg("no descriptor of this process is the client end");
    return -1;
}

static int sockopt(int fd, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof v;
    assert_int_equal(getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

/* TCP connections notice a vanished server in about 25 s (keepalives) unless the conninfo says
 * otherwise, and unacknowledged data gives up after 30 s. */
static void test_tcp_keepalive_defaults(void **state)
{
    (void)state;
    fx f;
    fx_start(&f);
    char dflt[160], own[200];
    snprintf(dflt, sizeof dflt, "host=127.0.0.1 port=%d dbname=x user=x sslmode=disable", f.port);
    snprintf(own, sizeof own, "postgresql://x@127.0.0.1:%d/x?sslmode=disable&keepalives_idle=42"
             "&tcp_user_timeout=7000", f.port);
    const char *conninfos[] = {dflt, own};
    const int idle[] = {10, 42}, user_timeout[] = {30000, 7000};
    for (int i = 0; i < 2; i++) {
        f.srv.naccepted = 0;
        eng_db *db = eng_db_new(f.loop, &(eng_db_opts){.conninfo = conninfos[i]});
        for (int turns = 0; f.srv.naccepted == 0 && turns < 1000; turns++)
            ev_run(f.loop, EVRUN_ONCE);
        assert_int_equal(f.srv.naccepted, 1);
        int fd = client_end(f.srv.held[0]);
        assert_int_equal(sockopt(fd, SOL_SOCKET, SO_KEEPALIVE), 1);
        assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE), idle[i]);
        assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL), 5);
        assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_KEEPCNT), 3);
        assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT), user_timeout[i]);
        eng_db_free(db);
        close(f.srv.held[0]);
    }
    f.srv.naccepted = 0; /* closed above */
    fx_stop(&f);
}

/* One map from SQLSTATE to eng_rc, for the asynchronous connection and the migration runner alike:
 * what a retry can fix (a lost connection, a rolled-back transaction, a full server) is
 * ENG_EDB_RETRY, and nothing else is. */
static void test_sqlstate_map(void **state)
{
    (void)state;
    static const struct {
        const char *sqlstate;
        eng_rc rc;
    } cases[] = {
        {"08006", ENG_EDB_RETRY}, {"08P01", ENG_EDB_RETRY}, {"57P01", ENG_EDB_RETRY},
        {"40001", ENG_EDB_RETRY}, {"40P01", ENG_EDB_RETRY}, {"53300", ENG_EDB_RETRY},
        {"53100", ENG_EDB},       {"57014", ENG_EDB},       {"42P01", ENG_EDB},
        {"23505", ENG_ECONFLICT}, {"55000", ENG_ECONFLICT}, {"FL409", ENG_ECONFLICT},
        {"P0002", ENG_ENOTFOUND}, {"22023", ENG_EINVAL},    {"23503", ENG_EINVAL},
        {"P0001", ENG_EINVAL},    {"", ENG_EDB},            {"40", ENG_EDB},
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(cases); i++) {
        if (eng_db_sqlstate_rc(cases[i].sqlstate) != cases[i].rc)
            fail_msg("%s: %s, want %s", cases[i].sqlstate,
                     eng_rc_name(eng_db_sqlstate_rc(cases[i].sqlstate)), eng_rc_name(cases[i].rc));
    }
    assert_int_equal(eng_db_sqlstate_rc(NULL), ENG_EDB);
}

static int slot_frees;
static const void *slot_freed[4];

static void slot_free(void *data)
{
    slot_freed[slot_frees++ % 4] = data;
}

/* A module's per-connection state is the connection's: freed with it (after its queued queries,
 * whose callbacks never run), and replaced state is freed at once. */
static void test_slots(void **state)
{
    (void)state;
    fx f;
    fx_start(&f);
    char conninfo[160];
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d dbname=x user=x sslmode=disable",
             f.port);
    static const char key_a, key_b;
    static int one, two, three;
    slot_frees = 0;
    eng_db *db = eng_db_new(f.loop, &(eng_db_opts){.conninfo = conninfo});
    assert_null(eng_db_slot(db, &key_a));
    eng_db_slot_set(db, &key_a, &one, slot_free);
    eng_db_slot_set(db, &key_b, &two, slot_free);
    assert_ptr_equal(eng_db_slot(db, &key_a), &one);
    assert_ptr_equal(eng_db_slot(db, &key_b), &two);
    eng_db_slot_set(db, &key_a, &three, slot_free);
    assert_int_equal(slot_frees, 1);
    assert_ptr_equal(slot_freed[0], &one);
    assert_ptr_equal(eng_db_slot(db, &key_a), &three);
    eng_db_query(db, "SELECT 1", 0, NULL, never_called, NULL);
    eng_db_free(db);
    assert_int_equal(slot_frees, 3);
    assert_true((slot_freed[1] == &three && slot_freed[2] == &two) ||
                (slot_freed[1] == &two && slot_freed[2] == &three));
    fx_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots),
        cmocka_unit_test(test_sqlstate_map),
        cmocka_unit_test(test_connect_attempt_times_out),
        cmocka_unit_test(test_tcp_keepalive_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
