/* tests/integration/test_docs.c: the examples of docs/workflows.md, so the reference cannot drift
 * from the engine. Its fenced blocks are read by their info string:
 *
 *   ```json workflow      a definition: must compile, and is registered
 *   ```json invalid PTR   a definition the engine must refuse, naming the field PTR
 *   ```json input         the input of the workflow above: a run of it must succeed (sandbox
 *                         providers, no credentials)
 *   ```json output KEY    what step KEY of that run output (every member shown must be there, with
 *                         that value; the output may have more)
 *
 * tests/schema/check.js reads the same workflow blocks for the JSON Schema. The known-bad
 * definitions of tests/schema/bad.json (which the schema must refuse) are checked here to be
 * refused by the engine too, so the two lists of rules agree. docs/operations.md must name every
 * environment variable the sources read. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <libpq-fe.h>
#include <signal.h>
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/wf_def.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"

typedef struct doc_block {
    char *info; /* after "```json " */
    char *body;
    int line;
} doc_block;

/* The ```json blocks of docs/workflows.md with an info string after the language. */
static doc_block *doc_blocks(size_t *n)
{
    char *path = eng_xasprintf("%s/docs/workflows.md", th_source_dir());
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot read %s", path);
    doc_block *out = NULL;
    size_t cap = 0;
    *n = 0;
    char line[8192];
    int lineno = 0;
    doc_block *cur = NULL;
    size_t body_len = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (cur) {
            if (strncmp(line, "```", 3) == 0) {
                cur = NULL;
                continue;
            }
            size_t l = strlen(line);
            cur->body = eng_xrealloc(cur->body, body_len + l + 1);
            memcpy(cur->body + body_len, line, l + 1);
            body_len += l;
        } else if (strncmp(line, "```json ", 8) == 0) {
            if (*n == cap) {
                cap = cap ? 2 * cap : 32;
                out = eng_xrealloc(out, cap * sizeof *out);
            }
            cur = &out[(*n)++];
            line[strcspn(line, "\r\n")] = '\0';
            cur->info = eng_xstrdup(line + 8);
            cur->body = eng_xstrdup("");
            cur->line = lineno;
            body_len = 0;
        }
    }
    fclose(f);
    free(path);
    return out;
}

static void doc_blocks_free(doc_block *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(b[i].info);
        free(b[i].body);
    }
    free(b);
}

static json_t *block_json(const doc_block *b)
{
    json_error_t jerr;
    json_t *j = json_loads(b->body, JSON_REJECT_DUPLICATES, &jerr);
    if (!j)
        fail_msg("docs/workflows.md:%d: not JSON: %s (line %d of the block)", b->line, jerr.text,
                 jerr.line);
    return j;
}

static bool starts(const char *s, const char *word)
{
    size_t n = strlen(word);
    return strncmp(s, word, n) == 0 && (s[n] == '\0' || s[n] == ' ');
}

/* Every member of want is in got with the same value (recursively); arrays match element-wise. */
static bool json_subset(const json_t *want, const json_t *got)
{
    if (json_is_object(want)) {
        if (!json_is_object(got))
            return false;
        const char *k;
        json_t *v;
        json_object_foreach ((json_t *)want, k, v)
            if (!json_subset(v, json_object_get(got, k)))
                return false;
        return true;
    }
    if (json_is_array(want)) {
        if (!json_is_array(got) || json_array_size(got) != json_array_size(want))
            return false;
        for (size_t i = 0; i < json_array_size(want); i++)
            if (!json_subset(json_array_get(want, i), json_array_get(got, i)))
                return false;
        return true;
    }
    return got && json_equal((json_t *)want, (json_t *)got);
}

static void test_examples_compile(void **state)
{
    (void)state;
    size_t n;
    doc_block *b = doc_blocks(&n);
    int workflows = 0, invalid = 0;
    for (size_t i = 0; i < n; i++) {
        if (!starts(b[i].info, "workflow") && !starts(b[i].info, "invalid"))
            continue;
        json_t *doc = block_json(&b[i]);
        json_t *def = NULL;
        eng_err err;
        eng_rc rc = wf_def_compile(doc, &def, &err);
        if (starts(b[i].info, "workflow")) {
            if (rc != ENG_OK)
                fail_msg("docs/workflows.md:%d: refused at %s: %s", b[i].line, err.field, err.msg);
            workflows++;
        } else {
            const char *field = b[i].info + strlen("invalid ");
            if (rc == ENG_OK)
                fail_msg("docs/workflows.md:%d: accepted, but documented as refused", b[i].line);
            if (strcmp(err.field, field) != 0)
                fail_msg("docs/workflows.md:%d: refused at %s (%s), documented at %s", b[i].line,
                         err.field, err.msg, field);
            invalid++;
        }
        json_decref(def);
        json_decref(doc);
    }
    doc_blocks_free(b, n);
    /* the reference shows a workflow for every kind and the main features */
    assert_true(workflows >= 15);
    assert_true(invalid >= 2);
}

static void test_schema_bad_list_refused(void **state)
{
    (void)state;
    char *path = eng_xasprintf("%s/tests/schema/bad.json", th_source_dir());
    json_error_t jerr;
    json_t *bad = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_array(bad))
        fail_msg("%s: %s", path, jerr.text);
    size_t i;
    json_t *b;
    json_array_foreach (bad, i, b) {
        json_t *def = NULL;
        eng_err err;
        if (wf_def_compile(json_object_get(b, "definition"), &def, &err) == ENG_OK)
            fail_msg("bad.json \"%s\": accepted by the engine",
                     json_string_value(json_object_get(b, "why")));
        json_decref(def);
    }
    assert_true(json_array_size(bad) >= 20);
    json_decref(bad);
    free(path);
}

/* Registers every documented workflow in order; runs the ones with an input and compares the
 * documented outputs. */
static void test_examples_run(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("docs", &tenant);
    PGconn *c = th_pgc_open(db);
    th_workers *ws = th_workers_start(db, 1, "docs", 0, 0, 0);
    size_t n;
    doc_block *b = doc_blocks(&n);
    long long wf = 0, run = 0;
    int runs = 0, outputs = 0;
    for (size_t i = 0; i < n; i++) {
        if (starts(b[i].info, "workflow")) {
            wf = th_engine_register(db, tenant, b[i].body);
            run = 0;
        } else if (starts(b[i].info, "input")) {
            if (!wf)
                fail_msg("docs/workflows.md:%d: an input with no workflow above", b[i].line);
            json_decref(block_json(&b[i]));
            run = th_pgc_enqueue(c, tenant, wf, b[i].body);
            if (!th_pgc_wait(c, "SELECT state NOT IN ('queued', 'running') FROM runs WHERE id = $1",
                             TH_P(th_num(run).s), 30))
                fail_msg("docs/workflows.md:%d: the run did not finish", b[i].line);
            char *st = th_pgc_str(c, "SELECT state || ' ' || coalesce(error::text, '') FROM runs "
                                     "WHERE id = $1",
                                  TH_P(th_num(run).s));
            if (strncmp(st, "succeeded", 9) != 0)
                fail_msg("docs/workflows.md:%d: the run ended %s", b[i].line, st);
            free(st);
            runs++;
        } else if (starts(b[i].info, "output")) {
            if (!run)
                fail_msg("docs/workflows.md:%d: an output with no run above", b[i].line);
            const char *key = b[i].info + strlen("output ");
            json_t *want = block_json(&b[i]);
            char *got_s = th_pgc_str(c, "SELECT output::text FROM steps WHERE run_id = $1 AND key = $2",
                                     TH_P(th_num(run).s, key));
            json_t *got = got_s ? json_loads(got_s, 0, NULL) : NULL;
            if (!json_subset(want, got))
                fail_msg("docs/workflows.md:%d: step %s output %s", b[i].line, key,
                         got_s ? got_s : "(none)");
            json_decref(got);
            json_decref(want);
            free(got_s);
            outputs++;
        }
    }
    doc_blocks_free(b, n);
    th_workers_stop(ws);
    assert_true(runs >= 5);
    assert_true(outputs >= 6);
    PQfinish(c);
    free(db);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot read %s", path);
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    char chunk[4096];
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n + 1 > cap) {
            cap = 2 * (len + n + 1);
            buf = eng_xrealloc(buf, cap);
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    fclose(f);
    buf = eng_xrealloc(buf, len + 1);
    buf[len] = '\0';
    return buf;
}

/* Every string literal of engine/, steps/, api/ and cli/ that names an environment variable of
 * flowd or of a provider appears in docs/operations.md. */
static void test_environment_documented(void **state)
{
    (void)state;
    static const char *const dirs[] = {"engine", "steps", "api", "cli"};
    static const char *const prefixes[] = {"FLOWD_", "OPENAI_", "ANTHROPIC_", "SENDGRID_",
                                           "TWILIO_", "WHATSAPP_"};
    char *ops_path = eng_xasprintf("%s/docs/operations.md", th_source_dir());
    char *ops = slurp(ops_path);
    free(ops_path);
    int found = 0;
    for (size_t d = 0; d < ENG_ARRAY_LEN(dirs); d++) {
        char *dir = eng_xasprintf("%s/%s", th_source_dir(), dirs[d]);
        DIR *dh = opendir(dir);
        assert_non_null(dh);
        struct dirent *e;
        while ((e = readdir(dh))) {
            size_t l = strlen(e->d_name);
            if (l < 3 || strcmp(e->d_name + l - 2, ".c") != 0)
                continue;
            char *path = eng_xasprintf("%s/%s", dir, e->d_name);
            char *src = slurp(path);
            for (char *q = strchr(src, '"'); q; q = strchr(q + 1, '"')) {
                char *end = q + 1;
                while (isupper((unsigned char)*end) || isdigit((unsigned char)*end) || *end == '_')
                    end++;
                if (*end != '"' || end == q + 1)
                    continue;
                bool ours = false;
                for (size_t p = 0; p < ENG_ARRAY_LEN(prefixes) && !ours; p++)
                    ours = strncmp(q + 1, prefixes[p], strlen(prefixes[p])) == 0;
                if (!ours)
                    continue;
                char *want = eng_xasprintf("`%.*s`", (int)(end - q - 1), q + 1);
                if (!strstr(ops, want))
                    fail_msg("%s reads %s, which docs/operations.md does not describe", path, want);
                free(want);
                found++;
                q = end;
            }
            free(src);
            free(path);
        }
        closedir(dh);
        free(dir);
    }
    free(ops);
    assert_true(found >= 40);
}

int main(void)
{
    eng_mem_init();
    eng_log_init();
    eng_httpc_global_init();
    eng_step_register_builtins();
    step_register_all();
    signal(SIGPIPE, SIG_IGN);
    /* the documented runs use the sandbox providers, whatever this shell has configured */
    static const char *const creds[] = {"OPENAI_API_KEY",   "ANTHROPIC_API_KEY",  "SENDGRID_API_KEY",
                                        "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "WHATSAPP_TOKEN",
                                        "FLOWD_PUBLIC_URL"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(creds); i++)
        unsetenv(creds[i]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_examples_compile),
        cmocka_unit_test(test_schema_bad_list_refused),
        cmocka_unit_test(test_examples_run),
        cmocka_unit_test(test_environment_documented),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    eng_httpc_global_cleanup();
    return rc;
}
