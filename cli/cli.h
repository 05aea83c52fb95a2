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
    const char *data_dir;     /* --data, FLOWD_DATA, default ./flowd-data */
    const char *database_url; /* --database or FLOWD_DATABASE_URL; NULL = embedded */
    const char *url;          /* --url or FLOWD_URL: the HTTP API; NULL = none given */
    bool url_flag;            /* url came from --url (FLOWD_URL alone does not redirect serve) */
    bool json;                /* --json, or stdout is not a terminal */
    bool allow_breaking;      /* flowd migrate --allow-breaking (engine/migrate.h) */
    eng_pgembed *embedded;    /* started by this process (stopped by cli_env_close) */
    char *conninfo;
    PGconn *conn;
} cli_env;

/* Whether arg is a global option that takes a value (--data, --database, --url). */
bool cli_global_takes_value(const char *arg);
/* Fills env from the environment and the global options (--data DIR, --database URL, --url URL,
 * --json), which may stand before or after the command and are removed from argv; with own_data,
 * a "--data" after the command is left to the command (flowd event NAME KEY --data JSON). Returns
 * the new argc (argv[0] is then the command), or -1 with err set (an option without its value). */
int cli_env_parse(cli_env *env, int argc, char **argv, bool own_data, eng_err *err);
/* Connects and applies pending migrations. With create (serve, migrate, init) the embedded cluster
 * is created when missing and so are the default tenant and its key (cli_bootstrap); without, a
 * data folder holding no cluster is an error naming it, and nothing is created. */
ENG_MUST_CHECK eng_rc cli_env_open(cli_env *env, bool create, eng_err *err);
void cli_env_close(cli_env *env);

/* Runs a parameterized statement; returns the result (caller PQclears) or NULL with err set. */
PGresult *cli_exec(cli_env *env, const char *sql, int nparams, const char *const *params, eng_err *err);
/* The default tenant's id, or 0 with err set. */
long long cli_default_tenant(cli_env *env, eng_err *err);
/* Creates the default tenant and its admin key when missing: FLOWD_API_KEY, else a random key
 * written to DATA/api-key (mode 0600) and printed once. FLOWD_API_KEY given for a database whose
 * default tenant exists must be one of its keys (ENG_EINVAL otherwise). */
ENG_MUST_CHECK eng_rc cli_bootstrap(cli_env *env, eng_err *err);

/* Registers the definition in the JSON file path for tenant (same JSON, same version; changed JSON,
 * the next one); *workflow_id gets its row and *version (may be NULL) its version. */
ENG_MUST_CHECK eng_rc cli_register_file(cli_env *env, long long tenant, const char *path,
                                        long long *workflow_id, int *version, eng_err *err);

int cli_cmd_serve(cli_env *env, int argc, char **argv);
int cli_cmd_init(cli_env *env, int argc, char **argv);
int cli_cmd_migrate(cli_env *env, int argc, char **argv);
int cli_cmd_enqueue(cli_env *env, int argc, char **argv);
int cli_cmd_status(cli_env *env, int argc, char **argv);
int cli_cmd_clock(cli_env *env, int argc, char **argv);
int cli_cmd_event(cli_env *env, int argc, char **argv);
/* Parses `event NAME KEY [--data JSON]` (usage printed on misuse): 0 and *data a new reference to
 * the data object, or the exit status. */
int cli_event_args(int argc, char **argv, const char **name, const char **key, json_t **data);
int cli_cmd_cancel_retry(cli_env *env, int argc, char **argv);
/* flowd tenant create NAME [--max-running N]: the tenant and its first admin key (cli/api_client.c) */
int cli_cmd_tenant(cli_env *env, int argc, char **argv);
/* flowd key create [--tenant NAME] [--role R] [--key KEY], on the database (cli/api_client.c) */
int cli_cmd_key(cli_env *env, int argc, char **argv);
/* The HTTP API commands (cli/cmd_inspect.c): runs, show, workflows, start, outbox. */
int cli_cmd_runs(cli_env *env, int argc, char **argv);
int cli_cmd_show(cli_env *env, int argc, char **argv);
int cli_cmd_workflows(cli_env *env, int argc, char **argv);
int cli_cmd_start(cli_env *env, int argc, char **argv);
int cli_cmd_outbox(cli_env *env, int argc, char **argv);
int cli_cmd_send(cli_env *env, int argc, char **argv); /* cli/cmd_sends.c */
/* flowd provider set|list|delete (HTTP API) and flowd secrets rotate (database); cli/cmd_providers.c */
int cli_cmd_provider(cli_env *env, int argc, char **argv);
int cli_cmd_quotas(cli_env *env, int argc, char **argv); /* cli/cmd_quotas.c */
int cli_cmd_secrets(cli_env *env, int argc, char **argv);
/* flowd schedule set|show|list|delete|pause|resume|trigger (HTTP API); cli/cmd_schedules.c */
int cli_cmd_schedule(cli_env *env, int argc, char **argv);
/* flowd hook set|show|list|delete (HTTP API); cli/cmd_hooks.c */
int cli_cmd_hook(cli_env *env, int argc, char **argv);

/* Prints the usage line of the command name on stderr (after a misuse). */
void cli_command_usage_error(const char *name);

/* ---- the HTTP API (cli/api_client.c) ---- */

typedef struct cli_api {
    char *url; /* without a trailing slash */
    char *key;
} cli_api;

/* The API to talk to: env->url, else (with local) http://127.0.0.1:8080; the key from
 * FLOWD_API_KEY, else DATA/api-key. ENG_EINVAL naming what is missing. Free with cli_api_free. */
ENG_MUST_CHECK eng_rc cli_api_open(const cli_env *env, bool local, cli_api *api, eng_err *err);
void cli_api_free(cli_api *api);
/* One request; *out gets the parsed JSON body (new reference; NULL when empty). Returns the HTTP
 * status, or 0 with err set when the server could not be reached or answered with an error. */
long cli_api_request(const cli_api *api, const char *method, const char *path, const json_t *body,
                     json_t **out, eng_err *err);
/* How an API command shows the answer when not asked for JSON; arg is the command's own. */
typedef void cli_show_fn(const json_t *out, const void *arg);
/* One request as a whole command: opens the API (cli_api_open, local), sends method path with body
 * (NULL for none; not stolen), prints the answer as JSON under --json, else through show (NULL:
 * nothing), and returns the exit status. */
int cli_api_command(cli_env *env, const char *method, const char *path, const json_t *body,
                    cli_show_fn *show, const void *arg);
/* Shows each element of out's array member with show_one, or the line empty when there is none. */
void cli_show_list(const json_t *out, const char *member, void (*show_one)(const json_t *item),
                   const char *empty);
/* Percent-encodes one path or query segment (caller frees). */
char *cli_api_escape(const char *s);
/* Prints j as indented JSON on stdout. */
void cli_print_json(const json_t *j);
/* Runs argv[0] (enqueue, status, event, cancel, retry, tenant) against the HTTP API env->url;
 * returns the exit status. */
int cli_api_main(cli_env *env, int argc, char **argv);

/* Prints "flowd: <msg>" (and the field when set) to stderr and returns exit status 1. */
int cli_fail(const eng_err *err);
