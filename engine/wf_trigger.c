/* engine/wf_trigger.c: see wf_trigger.h. */
#include "engine/wf_trigger.h"

#include <stdio.h>
#include <string.h>

#include "engine/jschema.h"
#include "engine/mem.h"

#define TRIGGER_INPUT_EVENT "/input/event"

eng_rc wf_trigger_check(const char *input_check, const char *workflow, const char *name,
                        const char *key, const json_t *data, eng_err *err)
{
    json_t *schema = json_loads(input_check, JSON_DECODE_ANY, NULL);
    jschema *js = NULL;
    eng_err why;
    if (!schema || jschema_compile(schema, "", &js, &why) != ENG_OK) {
        json_decref(schema);
        /* registration compiled it: a stored check that does not is a bug, not the caller's */
        return eng_err_set(err, ENG_EINTERNAL, "the input check of workflow %s does not compile",
                           workflow);
    }
    json_decref(schema);
    json_t *event_data = json_is_object(data) ? json_incref((json_t *)data) : json_object();
    json_t *input = json_pack("{s:{s:s, s:s, s:o}}", "event", "name", name, "key", key, "data",
                              event_data);
    eng_rc rc = input ? jschema_validate(js, input, "/input", &why) : ENG_EINTERNAL;
    json_decref(input);
    jschema_free(js);
    if (rc == ENG_OK)
        return ENG_OK;
    if (rc != ENG_EINVAL)
        return eng_err_set(err, rc, "cannot build the input of a run of workflow %s", workflow);
    /* "/input/event/data/x" is the event's "/data/x"; anything else (a check that wants
     * "/input/lead") is about the run's input as a whole, which the event cannot supply */
    size_t n = strlen(TRIGGER_INPUT_EVENT);
    const char *field = strncmp(why.field, TRIGGER_INPUT_EVENT, n) == 0 &&
                                (why.field[n] == '/' || why.field[n] == '\0')
                            ? why.field[n] ? why.field + n : "/"
                            : "/data";
    return eng_err_field(err, ENG_EINVAL, field,
                         "workflow %s, which this event starts, refuses its input at %s: %s",
                         workflow, why.field, why.msg);
}

eng_rc wf_trigger_check_rows(const PGresult *triggers, const char *name, const char *key,
                             const json_t *data, char **ids_out, eng_err *err)
{
    int n = PQntuples(triggers);
    eng_rc rc = ENG_OK;
    for (int i = 0; rc == ENG_OK && i < n; i++)
        if (!PQgetisnull(triggers, i, 2))
            rc = wf_trigger_check(PQgetvalue(triggers, i, 2), PQgetvalue(triggers, i, 1), name,
                                  key, data, err);
    if (rc != ENG_OK)
        return rc;
    char *ids = eng_xmalloc((size_t)n * 21 + 3), *at = ids; /* ids are at most 19 digits */
    *at++ = '{';
    for (int i = 0; i < n; i++)
        at += sprintf(at, "%s%.19s", i ? "," : "", PQgetvalue(triggers, i, 0));
    strcpy(at, "}");
    *ids_out = ids;
    return ENG_OK;
}
