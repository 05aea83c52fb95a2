/* tests/integration/test_sql_layout.c: the rules of migrations/ and sql/ (migrations/README.md),
 * held against the embedded files and real databases.
 *
 * - A database built from empty and one left by the previous release (its numbered migrations,
 *   applied as its runner did: no function files) and then brought up to date end with identical
 *   catalogs: function definitions, columns, constraints, indexes, triggers, types, views.
 * - Every function of the schema is defined in sql/, each signature once (an old signature kept
 *   for the previous release lives in compat.sql), and no numbered migration after the cut-over
 *   defines or calls one.
 * - migrations/schema.sql is the snapshot of the schema the runner builds today. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "engine/migrate.h"
#include "tests/support/th.h"

/* The last numbered migration of the previous release, whose runner knew no function files. */
#define PREVIOUS_RELEASE_LAST 31
/* The last numbered migration that may define functions (history); later ones hold DDL only. */
#define FUNCTIONS_CUTOVER 32

/* One row per object of the public schema, "kind name" then its definition, in a stable order. */
static const char CATALOG_SQL[] =
    "SELECT kind || ' ' || name || E'\\n' || def FROM ("
    "  SELECT 'function' AS kind, p.oid::regprocedure::text AS name,"
    "         pg_get_functiondef(p.oid)"
    "         || coalesce(E'\\ncomment: ' || obj_description(p.oid, 'pg_proc'), '') AS def"
    "    FROM pg_proc p"
    "   WHERE p.pronamespace = 'public'::regnamespace"
    "     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass"
    "                        AND d.objid = p.oid AND d.deptype = 'e')"
    "  UNION ALL"
    "  SELECT 'column', c.relname || '.' || a.attname,"
    "         a.attnum || ' ' || format_type(a.atttypid, a.atttypmod)"
    "         || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END"
    "         || coalesce(' DEFAULT ' || pg_get_expr(ad.adbin, ad.adrelid), '')"
    "    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
    "    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum"
    "   WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped"
    "  UNION ALL"
    "  SELECT 'relation', c.relname, c.relkind::text || ' ' || c.relpersistence::text"
    "         || coalesce(' ' || array_to_string(c.reloptions, ','), '')"
    "    FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
    "  UNION ALL"
    "  SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    "  UNION ALL"
    "  SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)"
    "    FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
    "  UNION ALL"
    "  SELECT 'trigger', tgrelid::regclass::text || '.' || tgname, pg_get_triggerdef(oid)"
    "    FROM pg_trigger WHERE NOT tgisinternal"
    "  UNION ALL"
    "  SELECT 'type', t.typname, t.typtype::text || ' ' || coalesce((SELECT string_agg(enumlabel,"
    "         ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid), '')"
    "    FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace"
    "  UNION ALL"
    "  SELECT 'view', viewname, definition FROM pg_views WHERE schemaname = 'public'"
    "  UNION ALL"
    "  SELECT 'sequence', sequencename, data_type || ' ' || start_value || ' ' || increment_by"
    "    FROM pg_sequences WHERE schemaname = 'public'"
    ") x ORDER BY kind, name";

/* The rows of CATALOG_SQL on db. Caller PQclears. */
static PGresult *catalog(const char *db)
{
    PGconn *c = th_pgc_open(db);
    PGresult *res = PQexec(c, CATALOG_SQL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("catalog query: %s", PQerrorMessage(c));
    PQfinish(c);
    return res;
}

/* Fails naming the first object whose definition differs between the two catalogs. */
static void catalog_expect_equal(const char *db_a, const char *db_b)
{
    PGresult *a = catalog(db_a);
    PGresult *b = catalog(db_b);
    int na = PQntuples(a), nb = PQntuples(b);
    assert_true(na > 0);
    for (int i = 0; i < na && i < nb; i++)
        if (strcmp(PQgetvalue(a, i, 0), PQgetvalue(b, i, 0)) != 0)
            fail_msg("catalogs differ at row %d:\n--- from empty:\n%s\n--- upgraded:\n%s", i,
                     PQgetvalue(a, i, 0), PQgetvalue(b, i, 0));
    if (na != nb)
        fail_msg("catalogs differ: %d objects from empty, %d upgraded (first extra: %s)", na, nb,
                 na > nb ? PQgetvalue(a, nb, 0) : PQgetvalue(b, na, 0));
    PQclear(a);
    PQclear(b);
}

static void migrate_current(const char *db)
{
    size_t n;
    const eng_migration *migs = eng_migrations_embedded(&n);
    eng_migrate_opts opts = eng_migrate_embedded_opts();
    eng_err err = {0};
    if (eng_migrate_up(db, migs, n, &opts, NULL, &err) != ENG_OK)
        fail_msg("migrate: %s", err.msg);
}

static long migration_number(const char *name)
{
    return strtol(name, NULL, 10);
}

static void test_catalog_equivalence(void **state)
{
    (void)state;
    char *fresh = th_pg_new_db("layout_fresh");
    migrate_current(fresh);

    /* the previous release's state: its numbered files, applied without function files */
    char *upgraded = th_pg_new_db("layout_upgraded");
    size_t n, prev = 0;
    const eng_migration *migs = eng_migrations_embedded(&n);
    while (prev < n && migration_number(migs[prev].name) <= PREVIOUS_RELEASE_LAST)
        prev++;
    assert_int_equal(migration_number(migs[prev - 1].name), PREVIOUS_RELEASE_LAST);
    eng_err err = {0};
    if (eng_migrate_up(upgraded, migs, prev, NULL, NULL, &err) != ENG_OK)
        fail_msg("previous release: %s", err.msg);
    assert_int_equal(th_pg_long(upgraded, "SELECT count(*) FROM pg_class "
                                          "WHERE relname = 'flowd_sql_files'"),
                     0);
    migrate_current(upgraded);
    catalog_expect_equal(fresh, upgraded);

    /* running again changes nothing: every file is recorded with the binary's set */
    migrate_current(upgraded);
    catalog_expect_equal(fresh, upgraded);
    size_t nfuncs;
    (void)eng_sql_embedded(&nfuncs);
    assert_int_equal(th_pg_longf(upgraded,
                                 "SELECT count(*) FROM flowd_sql_files WHERE set_number = %d",
                                 ENG_SQL_SET),
                     (long)nfuncs);
    th_pg_drop_db(fresh);
    th_pg_drop_db(upgraded);
}

/* Whether line (up to its end) starts, after blanks, with words (lower case, single spaces),
 * ignoring case and the amount of blank space between them. Sets *end after the last word. */
static bool line_starts_with(const char *line, const char *words, const char **end)
{
    const char *p = line;
    while (*p == ' ' || *p == '\t')
        p++;
    for (const char *w = words; *w; w++) {
        if (*w == ' ') {
            if (*p != ' ' && *p != '\t' && *p != '\n')
                return false;
            while (*p == ' ' || *p == '\t' || *p == '\n')
                p++;
        } else if (tolower((unsigned char)*p++) != *w) {
            return false;
        }
    }
    if (end)
        *end = p;
    return true;
}

/* The name of the function line defines ("CREATE [OR REPLACE] FUNCTION name("), else NULL.
 * Caller frees. */
static char *line_function(const char *line)
{
    const char *p;
    if (!line_starts_with(line, "create or replace function ", &p) &&
        !line_starts_with(line, "create function ", &p))
        return NULL;
    size_t n = strcspn(p, "( \t\n");
    return eng_xstrndup(p, n);
}

/* Appends to out the type of one parameter declaration ("p_ids bigint[]", "OUT id bigint",
 * "p_limit integer DEFAULT 10"): lower case, single spaces; nothing for an OUT parameter. The
 * parameters of flowd's functions are named, so the first word left is the name. */
static void param_type(const char *decl, size_t len, char *out, size_t cap)
{
    char words[16][64];
    int n = 0;
    for (size_t i = 0; i < len && n < 16;) {
        while (i < len && isspace((unsigned char)decl[i]))
            i++;
        size_t w = 0;
        while (i < len && !isspace((unsigned char)decl[i]) && w + 1 < sizeof words[0])
            words[n][w++] = (char)tolower((unsigned char)decl[i++]);
        words[n][w] = '\0';
        if (w > 0)
            n++;
    }
    int first = 0;
    if (n > 0 && strcmp(words[0], "out") == 0)
        return;
    if (n > 0 && (strcmp(words[0], "in") == 0 || strcmp(words[0], "inout") == 0 ||
                  strcmp(words[0], "variadic") == 0))
        first = 1;
    first++; /* the name */
    if (out[strlen(out) - 1] != '(')
        strncat(out, ",", cap - strlen(out) - 1);
    for (int k = first; k < n; k++) {
        if (strcmp(words[k], "default") == 0 || strcmp(words[k], "=") == 0)
            break;
        if (k > first)
            strncat(out, " ", cap - strlen(out) - 1);
        strncat(out, words[k], cap - strlen(out) - 1);
    }
}

/* "name(type,type)" of the function whose CREATE line starts at line: the parameter list runs to
 * its matching parenthesis, over several lines if need be. Caller frees. */
static char *function_signature(const char *line, const char *name)
{
    const char *p = strchr(line, '(');
    assert_non_null(p);
    char sig[512];
    snprintf(sig, sizeof sig, "%s(", name);
    size_t start = 0;
    int depth = 0;
    const char *args = ++p;
    for (size_t i = 0; args[i]; i++) {
        if (args[i] == '(') {
            depth++;
        } else if (args[i] == ')' && depth > 0) {
            depth--;
        } else if ((args[i] == ',' && depth == 0) || args[i] == ')') {
            param_type(args + start, i - start, sig, sizeof sig);
            start = i + 1;
            if (args[i] == ')')
                break;
        }
    }
    strncat(sig, ")", sizeof sig - strlen(sig) - 1);
    return eng_xstrdup(sig);
}

typedef struct defined {
    char *name; /* a signature, "name(type,type)", or a bare name */
    const char *file;
} defined;

static int defined_cmp(const void *a, const void *b)
{
    return strcmp(((const defined *)a)->name, ((const defined *)b)->name);
}

/* The function of defs that line calls, or NULL. Lines that only name a function are not calls:
 * comments, a trigger's EXECUTE FUNCTION, and DROP, ALTER or COMMENT ON FUNCTION (a numbered
 * migration drops what compat.sql no longer keeps). */
static const char *migration_call(const char *line, const defined *defs, size_t ndefs)
{
    size_t len = strcspn(line, "\n");
    char *text = eng_xstrndup(line, len);
    for (char *p = text; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    char *comment = strstr(text, "--");
    if (comment)
        *comment = '\0';
    const char *found = NULL;
    if (!strstr(text, "execute function") && !strstr(text, "execute procedure") &&
        !line_starts_with(text, "drop function ", NULL) &&
        !line_starts_with(text, "alter function ", NULL) &&
        !line_starts_with(text, "comment on function ", NULL)) {
        for (size_t i = 0; i < ndefs && !found; i++) {
            size_t n = strlen(defs[i].name);
            for (const char *p = strstr(text, defs[i].name); p && !found;
                 p = strstr(p + 1, defs[i].name)) {
                const char *q = p + n;
                while (*q == ' ' || *q == '\t')
                    q++;
                bool starts = p == text || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
                if (starts && *q == '(')
                    found = defs[i].name;
            }
        }
    }
    free(text);
    return found;
}

static void test_functions_live_in_sql(void **state)
{
    (void)state;
    size_t nfiles;
    const eng_migration *files = eng_sql_embedded(&nfiles);
    assert_true(nfiles > 0);
    defined *sigs = NULL; /* every signature with its file */
    defined *defs = NULL; /* every name, once */
    size_t nsigs = 0, ndefs = 0;
    for (size_t i = 0; i < nfiles; i++) {
        for (const char *line = files[i].sql; line; line = strchr(line, '\n')) {
            if (*line == '\n')
                line++;
            char *name = line_function(line);
            if (line_starts_with(line, "create ", NULL) && !name)
                fail_msg("sql/%s: only CREATE OR REPLACE FUNCTION belongs in sql/ (DDL goes in a "
                         "numbered migration): %.60s",
                         files[i].name, line);
            if (!name)
                continue;
            if (!line_starts_with(line, "create or replace function ", NULL))
                fail_msg("sql/%s: %s is defined with CREATE FUNCTION: use CREATE OR REPLACE",
                         files[i].name, name);
            sigs = eng_xrealloc(sigs, (nsigs + 1) * sizeof *sigs);
            sigs[nsigs++] = (defined){function_signature(line, name), files[i].name};
            bool seen = false;
            for (size_t j = 0; j < ndefs && !seen; j++)
                seen = strcmp(defs[j].name, name) == 0;
            if (seen) {
                free(name);
                continue;
            }
            defs = eng_xrealloc(defs, (ndefs + 1) * sizeof *defs);
            defs[ndefs++] = (defined){name, files[i].name};
        }
    }
    /* a signature defined twice (in one file or two) has one definition too many */
    qsort(sigs, nsigs, sizeof *sigs, defined_cmp);
    for (size_t i = 1; i < nsigs; i++)
        if (strcmp(sigs[i - 1].name, sigs[i].name) == 0)
            fail_msg("%s is defined in sql/%s and sql/%s: each function is defined once",
                     sigs[i].name, sigs[i - 1].file, sigs[i].file);
    qsort(defs, ndefs, sizeof *defs, defined_cmp);

    size_t nmigs;
    const eng_migration *migs = eng_migrations_embedded(&nmigs);
    for (size_t i = 0; i < nmigs; i++) {
        if (migration_number(migs[i].name) <= FUNCTIONS_CUTOVER)
            continue;
        for (const char *line = migs[i].sql; line; line = strchr(line, '\n')) {
            if (*line == '\n')
                line++;
            char *name = line_function(line);
            if (name)
                fail_msg("migrations/%s defines %s: functions live in sql/ (migrations/README.md)",
                         migs[i].name, name);
            const char *call = migration_call(line, defs, ndefs);
            if (call)
                fail_msg("migrations/%s calls %s: a numbered migration runs before the function "
                         "files and may meet any older version of it; write plain SQL "
                         "(migrations/README.md)",
                         migs[i].name, call);
        }
    }

    /* every function of the schema is one of sql/'s, and each of those exists */
    char *db = th_pg_new_db("layout_functions");
    migrate_current(db);
    PGconn *c = th_pgc_open(db);
    PGresult *res = PQexec(c, "SELECT DISTINCT proname::text FROM pg_proc "
                              "WHERE pronamespace = 'public'::regnamespace ORDER BY 1");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    for (int i = 0; i < PQntuples(res); i++) {
        defined key = {PQgetvalue(res, i, 0), NULL};
        if (!bsearch(&key, defs, ndefs, sizeof *defs, defined_cmp))
            fail_msg("function %s exists in the schema but not in sql/", key.name);
    }
    assert_int_equal((size_t)PQntuples(res), ndefs);
    PQclear(res);
    PQfinish(c);
    th_pg_drop_db(db);
    for (size_t i = 0; i < ndefs; i++)
        free(defs[i].name);
    free(defs);
    for (size_t i = 0; i < nsigs; i++)
        free(sigs[i].name);
    free(sigs);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    char *text = eng_xmalloc((size_t)len + 1);
    size_t got = fread(text, 1, (size_t)len, f);
    text[got] = '\0';
    fclose(f);
    return text;
}

static void test_schema_snapshot(void **state)
{
    (void)state;
    char *query_path = eng_xasprintf("%s/scripts/schema_snapshot.sql", th_source_dir());
    char *query = read_text(query_path);
    assert_non_null(query);
    char *db = th_pg_new_db("layout_schema");
    migrate_current(db);
    char *built = th_pg_value(db, query);
    assert_non_null(built);

    char *path = eng_xasprintf("%s/migrations/schema.sql", th_source_dir());
    char *stored = read_text(path);
    /* the file ends with the newline psql adds after the value */
    size_t n = strlen(built);
    if (!stored || strncmp(stored, built, n) != 0 || strcmp(stored + n, "\n") != 0) {
        size_t at = 0;
        while (stored && stored[at] && stored[at] == built[at])
            at++;
        size_t line = 1;
        for (size_t i = 0; i < at; i++)
            line += built[i] == '\n';
        fail_msg("migrations/schema.sql is stale (first difference on line %zu): run "
                 "scripts/schema-snapshot after a build, and commit the file",
                 line);
    }
    free(stored);
    free(path);
    free(built);
    th_pg_drop_db(db);
    free(query);
    free(query_path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catalog_equivalence),
        cmocka_unit_test(test_functions_live_in_sql),
        cmocka_unit_test(test_schema_snapshot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
