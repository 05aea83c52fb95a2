/* engine/wf_trigger.h: the input a workflow's trigger gives the run an event starts, and its check.
 *
 * A trigger (wf_def.h "triggers") starts a run with the input {"event": {"name", "key", "data"}}
 * (flowd_event_to in SQL builds the same object). Whoever applies an event from C checks that input
 * against each triggered version's input check first, so an event that would start a run with an
 * input its workflow refuses is refused as a whole, before anything is written. */
#pragma once

#include <jansson.h>
#include <libpq-fe.h>

#include "engine/err.h"

/* Validates the input an event (name, key, data: borrowed, NULL meaning {}) gives a run of
 * workflow against input_check (the version's stored check, JSON text). On a mismatch returns
 * ENG_EINVAL with err->field the pointer in the EVENT ("/data/lead/email", "/key") when the
 * offending value comes from it, and a message naming the workflow. */
eng_rc wf_trigger_check(const char *input_check, const char *workflow, const char *name,
                        const char *key, const json_t *data, eng_err *err);

/* The SQL that lists an event's triggered versions in the row form wf_trigger_check_rows reads;
 * parameters: tenant id, event name. */
#define WF_TRIGGER_ROWS_SQL                                                                        \
    "SELECT workflow_id, workflow, input_check FROM flowd_event_triggers($1, $2)"

/* The SQL that applies the event starting exactly the checked versions; parameters: tenant id,
 * event name, key, data (JSON text), the *ids_out of wf_trigger_check_rows. */
#define WF_TRIGGER_APPLY_SQL                                                                       \
    "SELECT resumed, cancelled, started FROM flowd_event_to($1, $2, $3, $4::jsonb, $5::bigint[])"

/* wf_trigger_check on every row of triggers (WF_TRIGGER_ROWS_SQL) that has a check. On success
 * *ids_out (caller frees) is the PostgreSQL array literal of the rows' workflow ids. */
eng_rc wf_trigger_check_rows(const PGresult *triggers, const char *name, const char *key,
                             const json_t *data, char **ids_out, eng_err *err);
