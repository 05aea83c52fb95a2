/* tests/integration/test_ops.c: what GET /v1/workers and GET /v1/queue read (sql/ops.sql).
 *
 * The process registry: a `flowd serve` writes its row with its workers at start, shows as up,
 * as stopped after SIGTERM, and as missing once its beats stop (the beat time is moved back
 * rather than waited for); a worker whose lease ran out while steps run in its name shows them
 * and a lapsed lease, an idle one none. Only the operator's tenant sees the registry. The queue:
 * a tenant's due steps by workflow with the oldest's age, delayed, running and quota-blocked
 * steps, its runs of the hour by minute, and nothing of another tenant's. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/mem.h"
#include "engine/step.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"

static json_t *json_of(const char *db, const char *fmt, long long arg)
{
    char *text = th_pg_valuef(db, fmt, arg);
    assert_non_null(text);
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    free(text);
    return j;
}

/* The registry's entry of process pid (borrowed from all), or NULL. */
static json_t *process_of(json_t *all, pid_t pid)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(all, "processes"), i, p) {
        if (json_integer_value(json_object_get(p, "pid")) == pid)
            return p;
    }
    return NULL;
}

static const char *str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static void test_registry(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("ops_registry", &tenant);
    pid_t p = th_serve_spawn(db, 2, 0);
    char *sql = eng_xasprintf("SELECT count(*) = 1 FROM processes WHERE pid = %d", (int)p);
    assert_true(th_engine_wait(db, sql, 30));
    free(sql);

    json_t *all = json_of(db, "SELECT flowd_workers_json(%lld)", tenant);
    json_t *me = process_of(all, p);
    assert_non_null(me);
    assert_string_equal(str(me, "state"), "up");
    assert_string_equal(str(me, "role"), "worker");
    assert_true(json_is_null(json_object_get(me, "listen")));
    assert_true(json_is_true(json_object_get(me, "webhooks")));
    json_t *workers = json_object_get(me, "workers");
    assert_int_equal(json_array_size(workers), 2);
    char *owner0 = eng_xasprintf("%s:0", str(me, "id"));
    assert_string_equal(str(json_array_get(workers, 0), "owner"), owner0);
    assert_true(json_is_true(json_object_get(json_array_get(workers, 0), "tick")));
    assert_true(json_is_false(json_object_get(json_array_get(workers, 1), "tick")));
    json_decref(all);

    /* another tenant's admin does not see the processes */
    char *other = th_pg_value(db, "INSERT INTO tenants (name) VALUES ('acme') RETURNING id");
    assert_null(th_pg_valuef(db, "SELECT flowd_workers_json(%s)", other));

    /* stopped cleanly */
    th_serve_kill(p, SIGTERM);
    all = json_of(db, "SELECT flowd_workers_json(%lld)", tenant);
    assert_string_equal(str(process_of(all, p), "state"), "stopped");
    json_decref(all);

    /* Dead without a word: its beats stopped 40 s ago, its workers' leases ran out, worker 0's
     * while a step ran in its name; worker 1 held nothing. */
    long long wf = th_engine_register(
        db, tenant, "{\"name\": \"one\", \"steps\": [{\"key\": \"s\", \"kind\": \"transform\"}]}");
    th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    char *esc = th_pg_valuef(db, "SELECT quote_literal('%s')", owner0);
    free(th_pg_valuef(db,
                      "UPDATE processes SET stopped_at = NULL,"
                      " heartbeat_at = now() - interval '40 seconds' WHERE pid = %d",
                      (int)p));
    free(th_pg_valuef(db,
                      "UPDATE steps SET state = 'running', lease_owner = %s, started_at = now()",
                      esc));
    free(th_pg_value(db, "UPDATE worker_leases SET expires_at = now() - interval '1 second'"));
    free(th_pg_valuef(db,
                      "INSERT INTO worker_leases (owner, expires_at) VALUES (%s, now() - interval"
                      " '1 second') ON CONFLICT (owner) DO UPDATE SET expires_at ="
                      " EXCLUDED.expires_at",
                      esc));
    all = json_of(db, "SELECT flowd_workers_json(%lld)", tenant);
    me = process_of(all, p);
    assert_string_equal(str(me, "state"), "missing");
    assert_int_equal(json_integer_value(json_object_get(me, "steps_in_flight")), 1);
    workers = json_object_get(me, "workers");
    assert_string_equal(str(json_array_get(workers, 0), "lease"), "lapsed");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(workers, 0),
                                                        "steps_in_flight")), 1);
    assert_string_equal(str(json_array_get(workers, 1), "lease"), "idle");
    json_decref(all);
    free(esc);
    free(owner0);
    free(other);
    free(db);
}

static void test_queue(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("ops_queue", &tenant);
    long long now_wf = th_engine_register(
        db, tenant, "{\"name\": \"now\", \"steps\": [{\"key\": \"s\", \"kind\": \"transform\"}]}");
    long long later_wf = th_engine_register(
        db, tenant,
        "{\"name\": \"later\", \"steps\": [{\"key\": \"s\", \"kind\": \"transform\","
        " \"delay\": \"1h\"}]}");
    th_engine_enqueue(db, tenant, now_wf, 5, NULL, 0);
    th_engine_enqueue(db, tenant, later_wf, 3, NULL, 0);
    /* one of "now"'s steps is running, one a quota blocked; another tenant's due steps are not
     * counted */
    free(th_pg_value(db, "UPDATE steps SET state = 'running', lease_owner = 'x:1:0'"
                         " WHERE id = (SELECT min(id) FROM steps)"));
    free(th_pg_value(db, "WITH b AS (UPDATE steps SET state = 'blocked', run_at = flowd_now()"
                         " + interval '1 day' WHERE id = (SELECT min(id) + 1 FROM steps)"
                         " RETURNING id, tenant_id, run_at)"
                         " INSERT INTO quota_blocked_steps SELECT id, tenant_id, run_at FROM b"));
    char *other = th_pg_value(db, "INSERT INTO tenants (name) VALUES ('acme') RETURNING id");
    long long other_wf = th_engine_register(
        db, atoll(other),
        "{\"name\": \"now\", \"steps\": [{\"key\": \"s\", \"kind\": \"transform\"}]}");
    th_engine_enqueue(db, atoll(other), other_wf, 2, NULL, 0);
    /* the engine clock moves on a second: the due steps have waited that long */
    free(th_pg_value(db, "UPDATE flowd_clock SET offset_ms = offset_ms + 1000"));

    json_t *q = json_of(db, "SELECT flowd_queue_json(%lld)", tenant);
    assert_int_equal(json_integer_value(json_object_get(q, "due")), 3);
    assert_int_equal(json_integer_value(json_object_get(q, "delayed")), 3);
    assert_int_equal(json_integer_value(json_object_get(q, "running")), 1);
    assert_int_equal(json_integer_value(json_object_get(q, "blocked")), 1);
    assert_true(json_integer_value(json_object_get(q, "oldest_due_age_ms")) >= 1000);
    json_t *wfs = json_object_get(q, "workflows");
    assert_int_equal(json_array_size(wfs), 1);
    json_t *w = json_array_get(wfs, 0);
    assert_string_equal(str(w, "workflow"), "now");
    assert_int_equal(json_integer_value(json_object_get(w, "due")), 3);
    assert_int_equal(json_integer_value(json_object_get(w, "running")), 1);
    assert_int_equal(json_integer_value(json_object_get(w, "blocked")), 1);
    assert_true(json_integer_value(json_object_get(w, "oldest_due_age_ms")) >= 1000);
    json_t *minutes = json_object_get(q, "minutes");
    assert_int_equal(json_array_size(minutes), 60);
    long long created = 0;
    size_t i;
    json_t *m;
    json_array_foreach(minutes, i, m) {
        created += json_integer_value(json_object_get(m, "created"));
    }
    assert_int_equal(created, 8);
    json_decref(q);

    /* finished runs count in the minute they finished; an hour later the runs are out of the
     * window */
    free(th_pg_valuef(db, "SELECT flowd_cancel_runs(array_agg(id), '{}') FROM runs"
                          " WHERE workflow_id = %lld", later_wf));
    q = json_of(db, "SELECT flowd_queue_json(%lld)", tenant);
    json_t *last = json_array_get(json_object_get(q, "minutes"), 59);
    assert_int_equal(json_integer_value(json_object_get(last, "cancelled")), 3);
    json_decref(q);
    free(th_pg_value(db, "UPDATE flowd_clock SET offset_ms = offset_ms + 3700000"));
    q = json_of(db, "SELECT flowd_queue_json(%lld)", tenant);
    created = 0;
    json_array_foreach(json_object_get(q, "minutes"), i, m) {
        created += json_integer_value(json_object_get(m, "created")) +
                   json_integer_value(json_object_get(m, "cancelled"));
    }
    assert_int_equal(created, 0);
    /* the cancelled runs' delayed steps were cancelled with them: the others are still due */
    assert_int_equal(json_integer_value(json_object_get(q, "due")), 3);
    json_decref(q);
    /* runs created over an hour ago that finish now count in this minute, each once, however
     * they end: the other tenant's succeed (their steps finish), this one's are cancelled or fail */
    free(th_pg_valuef(db, "WITH f AS (UPDATE steps SET state = 'succeeded', finished_at = flowd_now()"
                          " WHERE tenant_id = %s RETURNING id)"
                          " SELECT flowd_finish_steps(array_agg(id)) FROM f", other));
    long long cancelled = th_pg_longf(db, "SELECT flowd_cancel_runs(array_agg(id), '{}') FROM runs"
                                          " WHERE tenant_id = %lld AND finished_at IS NULL"
                                          " AND id %% 2 = 0", tenant);
    long long failed = th_pg_longf(db, "SELECT count(*) FROM runs WHERE tenant_id = %lld"
                                       " AND finished_at IS NULL", tenant);
    free(th_pg_valuef(db, "SELECT flowd_fail_runs(array_agg(id), '{\"code\": \"x\"}') FROM runs"
                          " WHERE tenant_id = %lld AND finished_at IS NULL", tenant));
    assert_true(cancelled > 0 && failed > 0);
    /* finished runs met again count nothing */
    assert_int_equal(th_pg_longf(db, "SELECT flowd_cancel_runs(array_agg(id), '{}') FROM runs"), 0);
    q = json_of(db, "SELECT flowd_queue_json(%lld)", tenant);
    last = json_array_get(json_object_get(q, "minutes"), 59);
    assert_int_equal(json_integer_value(json_object_get(last, "cancelled")), cancelled);
    assert_int_equal(json_integer_value(json_object_get(last, "failed")), failed);
    assert_int_equal(json_integer_value(json_object_get(last, "succeeded")), 0);
    json_decref(q);
    q = json_of(db, "SELECT flowd_queue_json(%lld)", atoll(other));
    last = json_array_get(json_object_get(q, "minutes"), 59);
    assert_int_equal(json_integer_value(json_object_get(last, "succeeded")), 2);
    assert_int_equal(json_integer_value(json_object_get(last, "failed")), 0);
    json_decref(q);
    free(other);
    free(db);
}

int main(void)
{
    eng_step_register_builtins();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_queue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
