/* cli/cli.h: what the subcommands of the flowd binary share: reaching the database (a server
 * named by --database / FLOWD_DATABASE_URL, else the embedded cluster under --data) and small
 * blocking query helpers (the command line is not an event loop). */
#pragma once

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "engine/err.h"
#include "engine/pgembed.h"

typedef struct cli_env {
    const char *data_dir;     /* --data, default ./flowd-data */
    const char *database_url; /* --database or FLOWD_DATABASE_URL; NULL = embedded */
    eng_pgembed *embedded;    /* started by this process (stopped by cli_env_close) */
    char *conninfo;
    PGconn *conn;
} cli_env;

/* Fills env from the global options before the subcommand (--data DIR, --database URL); those
 * options are removed from argv. Returns the new argc. */
int cli_env_parse(cli_env *env, int argc, char **argv);
/* Connects (starting the embedded cluster when needed) and applies pending migrations. */
ENG_MUST_CHECK eng_rc cli_env_open(cli_env *env, eng_err *err);
void cli_env_close(cli_env *env);

/* Runs a parameterized statement; returns the result (caller PQclears) or NULL with err set. */
PGresult *cli_exec(cli_env *env, const char *sql, int nparams, const char *const *params, eng_err *err);
/* The default tenant's id, or 0 with err set. */
long long cli_default_tenant(cli_env *env, eng_err *err);
/* Creates the default tenant and its admin key when missing: FLOWD_API_KEY, else a random key
 * written to DATA/api-key (mode 0600) and printed once. */
ENG_MUST_CHECK eng_rc cli_bootstrap(cli_env *env, eng_err *err);

/* Registers the definition in the JSON file path for tenant (same JSON, same version; changed JSON,
 * the next one); *workflow_id gets its row and *version (may be NULL) its version. */
ENG_MUST_CHECK eng_rc cli_register_file(cli_env *env, long long tenant, const char *path,
                                        long long *workflow_id, int *version, eng_err *err);

int cli_cmd_serve(cli_env *env, int argc, char **argv);
int cli_cmd_migrate(cli_env *env, int argc, char **argv);
int cli_cmd_enqueue(cli_env *env, int argc, char **argv);
int cli_cmd_status(cli_env *env, int argc, char **argv);
int cli_cmd_clock(cli_env *env, int argc, char **argv);
int cli_cmd_event(cli_env *env, int argc, char **argv);
/* Parses `event NAME KEY [--data JSON]` (usage printed on misuse): 0 and *data a new reference to
 * the data object, or the exit status. */
int cli_event_args(int argc, char **argv, const char *usage, const char **name, const char **key,
                   json_t **data);
int cli_cmd_cancel_retry(cli_env *env, int argc, char **argv);
/* flowd tenant create NAME [--max-running N]: the tenant and its first admin key (cli/api_client.c) */
int cli_cmd_tenant(cli_env *env, int argc, char **argv);

/* --url mode (cli/api_client.c): removes "--url URL" / "--url=URL" from argv (argc updated) and
 * returns URL, or NULL when absent. */
const char *cli_api_url_parse(int *argc, char **argv);
/* Runs argv[0] (enqueue, status, event, tenant) against the HTTP API at url with the key in
 * FLOWD_API_KEY; returns the exit status. */
int cli_api_main(const char *url, int argc, char **argv);

/* Prints "flowd: <msg>" (and the field when set) to stderr and returns exit status 1. */
int cli_fail(const eng_err *err);
