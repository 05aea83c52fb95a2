/* cli/main.c: the flowd binary: global options, help, and the subcommand table. The only place
 * that knows engine, steps and api together.
 *
 * Conventions (as git, docker, kubectl and the Temporal CLI have them): `flowd --help`, `flowd help
 * CMD` and `flowd CMD --help` print usage on stdout and exit 0 without running anything; global
 * options (--data, --database, --url, --json) go before or after the command; an unknown command
 * says so and exits 2. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "steps/steps.h"

#ifndef FLOWD_VERSION
#define FLOWD_VERSION "unknown"
#endif

/* How a command reaches flowd. */
enum cmd_mode {
    CMD_DIRECT,   /* the database only (--data / --database) */
    CMD_EITHER,   /* the database, or the HTTP API with --url / FLOWD_URL */
    CMD_API,      /* the HTTP API only (--url, FLOWD_URL, else the local server) */
};

typedef struct cli_command {
    const char *name;
    int (*run)(cli_env *env, int argc, char **argv);
    enum cmd_mode mode;
    bool own_data; /* "--data" after the command is the command's own option (event's JSON) */
    const char *args;
    const char *summary;
    const char *details; /* extra lines for `flowd help CMD`, or NULL */
} cli_command;

static const cli_command commands[] = {
    {"serve", cli_cmd_serve, CMD_DIRECT, false,
     "[--listen ADDR] [--role all|api|worker] [--workers N] [--workflows DIR] [--retention 90d] "
     "[--max-inflight N] [--batch N] [--lease-ms MS] [--api-threads N] [--allow-private-targets] "
     "[--max-connections N] [--max-connections-per-client N] [--request-timeout 30s] "
     "[--sse-heartbeat 15s] [--read-database URL] [--read-max-lag 1s]",
     "run the API and the workers (creates the embedded cluster under --data on first use)",
     "every option has an environment form: FLOWD_LISTEN, FLOWD_ROLE, FLOWD_WORKERS, FLOWD_WORKFLOWS,\n"
     "FLOWD_RETENTION, FLOWD_MAX_INFLIGHT, FLOWD_BATCH, FLOWD_LEASE_MS, FLOWD_API_THREADS,\n"
     "FLOWD_ALLOW_PRIVATE_TARGETS=1, FLOWD_MAX_CONNECTIONS, FLOWD_MAX_CONNECTIONS_PER_CLIENT,\n"
     "FLOWD_REQUEST_TIMEOUT, FLOWD_SSE_HEARTBEAT, FLOWD_READ_DATABASE_URL, FLOWD_READ_MAX_LAG; a\n"
     "flag wins over its variable.\n"
     "--read-database: a streaming standby (or a conninfo listing standbys) that the API's polls\n"
     "read from while it is at most --read-max-lag behind; a tenant never sees its own writes\n"
     "missing there, and the primary answers whenever the standby cannot (README, Scaling out).\n"
     "--sse-heartbeat: how long a run's event stream may stay quiet before a heartbeat comment.\n"
     "--workflows registers every *.json of DIR at start, all or none: a bad file is named and\n"
     "nothing of the folder is registered. FLOWD_TEST_CLOCK=1 puts the database's clock in test\n"
     "mode (flowd clock); FLOWD_API_KEY chooses the default tenant's key when it is created."},
    {"init", cli_cmd_init, CMD_DIRECT, false, "",
     "create the embedded cluster under --data, the default tenant and its API key", NULL},
    {"migrate", cli_cmd_migrate, CMD_DIRECT, false, "[--allow-breaking]",
     "apply pending database migrations (creates the embedded cluster on first use)",
     "--allow-breaking also applies migrations marked breaking (migrations/README.md), which\n"
     "workers of the previous release cannot run with: stop them first. Other starts refuse them."},
    {"enqueue", cli_cmd_enqueue, CMD_EITHER, false,
     "--workflow FILE.json [--input JSON] [--priority N] [--idempotency-key KEY]",
     "register a workflow file and start a run of it; prints the run id", NULL},
    {"start", cli_cmd_start, CMD_API, false,
     "WORKFLOW [--input JSON] [--version N] [--priority N] [--idempotency-key KEY] "
     "[--start-at TIME | --start-in DURATION] [--wait]",
     "start a run of a registered workflow by name; prints the run id",
     "--wait follows the run until it ends and exits as `flowd show --wait` does. --start-at\n"
     "(RFC 3339) or --start-in (\"2h\") starts it later: it is scheduled until then."},
    {"runs", cli_cmd_runs, CMD_API, false,
     "[--workflow NAME] [--state STATE] [--batch ID] [--limit N] [--cursor C]",
     "list runs, newest first (the filters of GET /v1/runs)", NULL},
    {"show", cli_cmd_show, CMD_API, false, "RUN_ID [--follow | --wait]",
     "show a run: state, progress, steps",
     "--follow prints the run's events as they happen until it ends; --wait prints nothing until\n"
     "then. Both exit with the run's outcome: 0 succeeded, 1 failed, 3 cancelled."},
    {"status", cli_cmd_status, CMD_EITHER, false, "RUN_ID", "print a run as JSON", NULL},
    {"workflows", cli_cmd_workflows, CMD_API, false, "", "list registered workflows", NULL},
    {"outbox", cli_cmd_outbox, CMD_API, false, "[--run ID] [--after N] [--limit N]",
     "read the sandbox providers' outbox (what would have been sent)", NULL},
    {"send", cli_cmd_send, CMD_API, false, "settle SEND_KEY sent|not-sent [--message-id ID]",
     "settle a message whose outcome is unknown, so that its waiting step goes on",
     "The step waits with the error code unknown, which names the send key. sent: the provider\n"
     "has the message (its id with --message-id); not-sent: it never went out, and is sent."},
    {"provider", cli_cmd_provider, CMD_API, false,
     "set PROVIDER FIELD=VALUE... | list | delete PROVIDER",
     "set, list or remove the tenant's provider settings (admin key; secrets shown masked)",
     "PROVIDER: openai, anthropic, openai_compatible, sendgrid, twilio, whatsapp. set replaces all\n"
     "of the provider's settings, e.g. flowd provider set twilio account_sid=AC.. auth_token=- from=+1..\n"
     "FIELD=- reads that value from stdin (keeps a secret out of shell history). The server seals\n"
     "secrets under its FLOWD_SECRET_KEY and refuses them when it has none."},
    {"schedule", cli_cmd_schedule, CMD_API, false,
     "set NAME --workflow W (--cron EXPR | --every DURATION) [options] | show NAME | list | "
     "delete NAME | pause NAME | resume NAME | trigger NAME",
     "create or change, show, list, remove, pause, resume or fire the tenant's schedules",
     "set options: --tz ZONE (IANA, default UTC; the cron is read in its local time), --input JSON\n"
     "(a template: {{schedule.name}}, {{schedule.fire_time}}, {{schedule.previous_fire_time}}),\n"
     "--version N, --overlap allow|skip|cancel_previous, --catchup none|latest|all,\n"
     "--catchup-window DURATION, --jitter DURATION, --start-at TIME, --end-at TIME, --paused.\n"
     "show prints the next 10 ticks in UTC and in the schedule's zone; trigger fires it once now\n"
     "and prints the run id."},
    {"hook", cli_cmd_hook, CMD_API, false, "set NAME FILE | show NAME | list | delete NAME",
     "create or replace, show, list or remove the tenant's inbound custom hooks (admin key)",
     "FILE (\"-\": stdin) is the hook's JSON, e.g. {\"verify\": {\"hmac\": \"sha256\", \"header\":\n"
     "\"X-Signature\", \"secret\": \"...\"}, \"event\": {\"name\": \"crm.order\", \"key\":\n"
     "\"{{body.order_id}}\"}} (docs/webhooks.md). Deliveries go to POST /v1/hooks/custom/NAME?tenant=ID.\n"
     "The server seals the secret under its FLOWD_SECRET_KEY and refuses it when it has none."},
    {"quotas", cli_cmd_quotas, CMD_API, false,
     "TENANT [--runs-per-month N|none] [--llm-tokens-per-month N|none] "
     "[--llm-cost-usd-per-month USD|none] [--sends-per-day N|none]",
     "show a tenant's quotas, or set them (admin key of the tenant that created it, or of default)",
     "Quotas not named keep their value. Enqueueing past runs_per_month (runs created through\n"
     "the API in a calendar month, UTC) is refused with 429 quota_exceeded, naming the quota, its\n"
     "limit, what is used and when it resets. An llm step past llm_tokens_per_month or\n"
     "llm_cost_usd_per_month (calendar month, UTC), and an email, sms or whatsapp step past\n"
     "sends_per_day (UTC day), waits in the state blocked until the quota resets or is raised\n"
     "(or fails, when its workflow says \"quota\": {\"on_exceeded\": \"fail\"})."},
    {"secrets", cli_cmd_secrets, CMD_DIRECT, false, "rotate",
     "re-seal every stored secret (providers, custom hooks) under FLOWD_SECRET_KEY",
     "Rotation: give the server the new key as FLOWD_SECRET_KEY and the old one as\n"
     "FLOWD_SECRET_KEY_PREVIOUS, run flowd secrets rotate with the same two variables, then drop\n"
     "FLOWD_SECRET_KEY_PREVIOUS. Secrets stored in clear (older SQL) are sealed as well. All rows or\n"
     "none; a secret no configured key opens is named and nothing changes."},
    {"event", cli_cmd_event, CMD_EITHER, true, "NAME KEY [--data JSON]",
     "send an event: resumes waits on (NAME, KEY), cancels runs with cancel_on it, starts triggered "
     "runs",
     NULL},
    {"cancel", cli_cmd_cancel_retry, CMD_EITHER, false, "RUN_ID", "cancel a run", NULL},
    {"retry", cli_cmd_cancel_retry, CMD_EITHER, false, "RUN_ID",
     "retry what failed or was cancelled (finished steps keep their outputs)", NULL},
    {"tenant", cli_cmd_tenant, CMD_EITHER, false, "create NAME [--max-running N]",
     "create a tenant and its first admin key", NULL},
    {"key", cli_cmd_key, CMD_DIRECT, false, "create [--tenant NAME] [--role admin|member]",
     "create a new API key for an existing tenant (default: the default tenant)",
     "Works on the database (--data / --database), so a lost key can be replaced. For the default\n"
     "tenant the key is also written to DATA/api-key when that file is missing."},
    {"clock", cli_cmd_clock, CMD_DIRECT, false, "advance DURATION | advance --to-next-due | reset",
     "move the engine clock of every process (a database in test mode), or reset it to real time",
     "Test mode is the database's: flowd serve with FLOWD_TEST_CLOCK=1 puts it there."},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: flowd [global options] COMMAND [options]\n"
               "\n"
               "global options (before or after the command):\n"
               "  --data DIR        the embedded database's folder (default ./flowd-data; FLOWD_DATA)\n"
               "  --database URL    an existing PostgreSQL instead (FLOWD_DATABASE_URL)\n"
               "  --url URL         talk to a server's HTTP API (FLOWD_URL); the key comes from\n"
               "                    FLOWD_API_KEY, else DIR/api-key\n"
               "  --json            JSON output (the default when stdout is not a terminal)\n"
               "  --help, -h        this text; `flowd help COMMAND` or `flowd COMMAND --help`\n"
               "  --version         the version\n"
               "\n"
               "commands:\n");
    for (size_t i = 0; i < ENG_ARRAY_LEN(commands); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nruns, show, workflows, start, outbox, send, provider and schedule use the HTTP API\n"
               "(http://127.0.0.1:8080 unless --url or FLOWD_URL says otherwise); enqueue, status,\n"
               "event, cancel, retry and tenant use it when --url or FLOWD_URL is given, else the\n"
               "database.\n");
}

static const cli_command *find_command(const char *name)
{
    for (size_t i = 0; i < ENG_ARRAY_LEN(commands); i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static void command_usage(const cli_command *c)
{
    printf("usage: flowd %s%s%s\n\n%s\n", c->name, c->args[0] ? " " : "", c->args, c->summary);
    if (c->details)
        printf("\n%s\n", c->details);
    if (c->mode == CMD_EITHER)
        printf("\nWith --url or FLOWD_URL it goes through the HTTP API, else to the database.\n");
    else if (c->mode == CMD_API)
        printf("\nGoes through the HTTP API (--url, FLOWD_URL, else http://127.0.0.1:8080).\n");
}

static int unknown_command(const char *name)
{
    fprintf(stderr, "flowd: unknown command \"%s\" (flowd --help lists them)\n", name);
    return 2;
}

void cli_command_usage_error(const char *name)
{
    const cli_command *c = find_command(name);
    if (c)
        fprintf(stderr, "usage: flowd %s %s\n(flowd %s --help for more)\n", c->name, c->args,
                c->name);
}

int main(int argc, char **argv)
{
    eng_mem_init();
    eng_log_init();
    /* the command word: the first argument that is neither a global option nor its value */
    const cli_command *cmd = NULL;
    const char *word = NULL;
    for (int i = 1; i < argc; i++) {
        if (cli_global_takes_value(argv[i])) {
            i++;
            continue;
        }
        if (argv[i][0] == '-' && argv[i][1])
            continue;
        word = argv[i];
        cmd = find_command(word);
        break;
    }
    bool help = false;
    for (int i = 1; i < argc && !help; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        help = strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0;
        if (strcmp(argv[i], "--version") == 0 && !word) {
            printf("flowd %s\n", FLOWD_VERSION);
            return 0;
        }
    }
    if (word && strcmp(word, "help") == 0) {
        /* flowd help [COMMAND] */
        const char *topic = NULL;
        for (int i = 1; i < argc; i++)
            if (argv[i] != word && argv[i][0] != '-' && !topic)
                topic = argv[i];
        if (!topic) {
            usage(stdout);
            return 0;
        }
        const cli_command *c = find_command(topic);
        if (!c)
            return unknown_command(topic);
        command_usage(c);
        return 0;
    }
    if (help) {
        if (cmd)
            command_usage(cmd);
        else if (word)
            return unknown_command(word);
        else
            usage(stdout);
        return 0;
    }
    if (!word) {
        usage(stderr);
        return 2;
    }
    if (!cmd)
        return unknown_command(word);

    eng_httpc_global_init();
    eng_step_register_builtins();
    step_register_all();
    cli_env env = {0};
    eng_err err;
    int n = cli_env_parse(&env, argc - 1, argv + 1, cmd->own_data, &err);
    int status;
    if (n < 0) {
        status = cli_fail(&err);
    } else if (env.url_flag && cmd->mode == CMD_DIRECT) {
        eng_err_set(&err, ENG_EINVAL, "%s works on the database (--data or --database), not over --url",
                    cmd->name);
        status = cli_fail(&err);
    } else if (env.url && cmd->mode == CMD_EITHER) {
        status = cli_api_main(&env, n, argv + 1);
    } else {
        status = cmd->run(&env, n, argv + 1);
    }
    cli_env_close(&env);
    eng_httpc_global_cleanup();
    return status;
}
