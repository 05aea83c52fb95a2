/* steps/llm_batch.c: recorded llm answers, looked up and written in batches (see llm_batch.h). */
#include "steps/llm_batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/db.h"
#include "engine/log.h"
#include "engine/mem.h"

enum { BQ_LOOKUP = 0, BQ_RECORD = 1 };

typedef struct llm_batch llm_batch;

/* One per connection, in its slot (eng_db_slot): freed with it. */
typedef struct llm_batcher {
    struct eng_db *db;
    llm_batch_item *head[2], *tail[2]; /* waiting, per queue */
    llm_batch *inflight[2];            /* the batch of that queue on the wire, or NULL */
} llm_batcher;

struct llm_batch {
    llm_batcher *b;
    int which;
    size_t n;
    llm_batch_item **items;
};

static const char batcher_key; /* the slot's key: its address */

/* The connection is going (eng_db_free) and drops the batches on the wire without answering them:
 * their items hear ENG_ECANCELED instead, so their owners can let go of them. */
static void batcher_free(void *data)
{
    llm_batcher *b = data;
    eng_err err;
    eng_err_set(&err, ENG_ECANCELED, "the connection was closed");
    for (int q = 0; q < 2; q++) {
        llm_batch *bt = b->inflight[q];
        if (!bt)
            continue;
        for (size_t i = 0; i < bt->n; i++)
            bt->items[i]->done(bt->items[i], &err, NULL);
        free(bt->items);
        free(bt);
    }
    free(b);
}

static llm_batcher *batcher_for(struct eng_db *db)
{
    llm_batcher *b = eng_db_slot(db, &batcher_key);
    if (!b) {
        b = eng_xcalloc(1, sizeof *b);
        b->db = db;
        eng_db_slot_set(db, &batcher_key, b, batcher_free);
    }
    return b;
}

static void batch_flush(llm_batcher *b, int which);

static void batch_done(void *arg, const eng_err *err, const PGresult *res)
{
    llm_batch *bt = arg;
    llm_batcher *b = bt->b;
    b->inflight[bt->which] = NULL;
    json_t **found = NULL;
    if (bt->which == BQ_LOOKUP)
        found = eng_xcalloc(bt->n, sizeof *found);
    for (int r = 0; !err && res && r < PQntuples(res); r++) {
        long i = strtol(PQgetvalue(res, r, 0), NULL, 10);
        if (i < 0 || (size_t)i >= bt->n)
            continue;
        if (found && !found[i])
            found[i] = json_loads(PQgetvalue(res, r, 1), 0, NULL);
        else if (!found)
            bt->items[i]->cost_usd = strtod(PQgetvalue(res, r, 1), NULL);
    }
    for (size_t i = 0; i < bt->n; i++) {
        llm_batch_item *it = bt->items[i];
        it->done(it, err, found ? found[i] : NULL);
    }
    free(found);
    free(bt->items);
    int which = bt->which;
    free(bt);
    if (b->head[which] && !b->inflight[which])
        batch_flush(b, which);
}

static int buf_sink(const char *data, size_t n, void *buf)
{
    return eng_buf_append(buf, data, n) == ENG_OK ? 0 : -1;
}

static bool buf_json(eng_buf *buf, const json_t *v)
{
    return json_dump_callback(v, buf_sink, buf, JSON_COMPACT | JSON_ENCODE_ANY) == 0;
}

/* The batch's rows as the JSON array both SQL functions read (each takes the keys it needs),
 * written straight into one buffer: thousands of rows would otherwise be built as JSON objects
 * only to be serialized once. */
static char *batch_rows(llm_batch_item **items, size_t n, int which)
{
    eng_buf rows;
    eng_buf_init(&rows, 0);
    bool ok = eng_buf_append(&rows, "[", 1) == ENG_OK;
    for (size_t i = 0; i < n && ok; i++) {
        const llm_batch_item *it = items[i];
        json_t *key = json_string(it->step);
        ok = eng_buf_appendf(&rows, "%s{\"i\":%zu,\"tenant\":%lld,\"run\":%lld,\"item\":\"\","
                                    "\"hash\":\"%s\",\"step\":",
                             i ? "," : "", i, (long long)it->tenant, (long long)it->run,
                             it->hash) == ENG_OK &&
             buf_json(&rows, key);
        json_decref(key);
        if (ok && which == BQ_RECORD)
            ok = eng_buf_append(&rows, ",\"output\":", 10) == ENG_OK && buf_json(&rows, it->output);
        ok = ok && eng_buf_append(&rows, "}", 1) == ENG_OK;
    }
    if (!ok || eng_buf_append(&rows, "]", 1) != ENG_OK) {
        log_error("out of memory", LOG_S("where", "llm batch rows"));
        abort();
    }
    return rows.ptr; /* the buffer's allocation, NUL-terminated */
}

static void batch_flush(llm_batcher *b, int which)
{
    llm_batch *bt = eng_xcalloc(1, sizeof *bt);
    bt->b = b;
    bt->which = which;
    for (llm_batch_item *it = b->head[which]; it; it = it->next)
        bt->n++;
    bt->items = eng_xcalloc(bt->n, sizeof *bt->items);
    size_t i = 0;
    for (llm_batch_item *it = b->head[which]; it; it = it->next, i++) {
        it->queued = false;
        bt->items[i] = it;
    }
    b->head[which] = b->tail[which] = NULL;
    b->inflight[which] = bt;
    char *s = batch_rows(bt->items, bt->n, which);
    const char *params[] = {s};
    eng_db_query(b->db,
                 which == BQ_LOOKUP ? "SELECT i, output FROM flowd_llm_lookup_many($1::jsonb)"
                                    : "SELECT i, cost_usd FROM flowd_llm_record_costs($1::jsonb)",
                 1, params, batch_done, bt);
    free(s);
}

static void batch_enqueue(struct eng_db *db, llm_batch_item *it, int which)
{
    llm_batcher *b = batcher_for(db);
    it->next = NULL;
    it->queued = true;
    if (b->tail[which])
        b->tail[which]->next = it;
    else
        b->head[which] = it;
    b->tail[which] = it;
    if (!b->inflight[which])
        batch_flush(b, which);
}

void llm_batch_lookup(struct eng_db *db, llm_batch_item *it)
{
    batch_enqueue(db, it, BQ_LOOKUP);
}

void llm_batch_record(struct eng_db *db, llm_batch_item *it)
{
    batch_enqueue(db, it, BQ_RECORD);
}

bool llm_batch_withdraw(struct eng_db *db, llm_batch_item *it)
{
    if (!it->queued)
        return false;
    llm_batcher *b = batcher_for(db);
    for (int q = 0; q < 2; q++) {
        llm_batch_item *prev = NULL;
        for (llm_batch_item *x = b->head[q]; x; prev = x, x = x->next) {
            if (x != it)
                continue;
            if (prev)
                prev->next = x->next;
            else
                b->head[q] = x->next;
            if (b->tail[q] == x)
                b->tail[q] = prev;
            it->queued = false;
            return true;
        }
    }
    return true;
}
