/* steps/inputs.c: rendered step inputs, recorded in batches (see inputs.h). */
#include "steps/inputs.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/db.h"
#include "engine/log.h"
#include "engine/mem.h"

/* One per connection, in its slot: freed with it. */
typedef struct stepin_batcher {
    struct eng_db *db;
    eng_buf waiting; /* "[row,row" of the rows not sent yet; empty when there are none */
    size_t dropped;  /* rows left out since the last batch: the waiting ones were too many */
    bool inflight;   /* a batch is on the wire */
} stepin_batcher;

static const char batcher_key; /* the slot's key: its address */

/* The connection is going: a batch on the wire is never answered (eng_db_free drops it). */
static void batcher_free(void *data)
{
    stepin_batcher *b = data;
    eng_buf_deinit(&b->waiting);
    free(b);
}

static void must(eng_rc rc)
{
    if (rc != ENG_OK) {
        log_error("out of memory", LOG_S("where", "step input rows"));
        abort();
    }
}

static void batch_flush(stepin_batcher *b);

static void batch_done(void *arg, const eng_err *err, const PGresult *res)
{
    (void)res;
    stepin_batcher *b = arg;
    b->inflight = false;
    if (err)
        log_warn("rendered step inputs not recorded", LOG_S("reason", err->msg));
    if (b->waiting.len)
        batch_flush(b);
}

static void batch_flush(stepin_batcher *b)
{
    if (b->dropped) {
        log_warn("rendered step inputs not recorded: too many waiting",
                 LOG_I("steps", b->dropped));
        b->dropped = 0;
    }
    must(eng_buf_append(&b->waiting, "]", 1));
    char *rows = eng_buf_take(&b->waiting, NULL);
    const char *params[] = {rows};
    b->inflight = true;
    eng_db_query(b->db, "SELECT flowd_step_inputs_put($1::jsonb)", 1, params, batch_done, b);
    free(rows);
}

void stepin_record(const eng_step_ctx *ctx)
{
    struct eng_db *db = eng_step_db(ctx);
    stepin_batcher *b = eng_db_slot(db, &batcher_key);
    if (!b) {
        b = eng_xcalloc(1, sizeof *b);
        b->db = db;
        eng_buf_init(&b->waiting, 0);
        eng_db_slot_set(db, &batcher_key, b, batcher_free);
    }
    char *input = json_dumps(eng_step_input(ctx), JSON_COMPACT | JSON_ENCODE_ANY);
    size_t n = input ? strlen(input) : 0;
    bool kept = input && n <= STEPIN_MAX_INPUT;
    if (b->waiting.len + (kept ? n : 0) + 128 > STEPIN_MAX_WAITING) {
        b->dropped++;
        free(input);
        return;
    }
    must(eng_buf_appendf(&b->waiting, "%s{\"step\":%lld,\"tenant\":%lld,\"attempt\":%d,\"bytes\":%zu,"
                                      "\"input\":%s}",
                         b->waiting.len ? "," : "[", (long long)eng_step_id(ctx),
                         (long long)eng_step_tenant_id(ctx), eng_step_attempt(ctx), n,
                         kept ? input : "null"));
    free(input);
    if (!b->inflight)
        batch_flush(b);
}
