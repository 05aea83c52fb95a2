/* cli/main.c: the flowd binary: global set-up and the subcommand table. The only place that
 * knows engine, steps and api together. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "steps/steps.h"

static const struct {
    const char *name;
    int (*run)(cli_env *env, int argc, char **argv);
    const char *help;
} commands[] = {
    {"serve", cli_cmd_serve, "run the workers (embedded PostgreSQL unless --database)"},
    {"migrate", cli_cmd_migrate, "apply pending database migrations"},
    {"enqueue", cli_cmd_enqueue, "register a workflow file and start a run of it"},
    {"status", cli_cmd_status, "print a run as JSON"},
    {"event", cli_cmd_event, "send an event NAME KEY [--data JSON]: resumes waits, cancels runs"},
    {"cancel", cli_cmd_cancel_retry, "cancel a run"},
    {"retry", cli_cmd_cancel_retry, "retry a failed or cancelled run"},
    {"clock", cli_cmd_clock, "move the engine clock (test mode) or reset it to real time"},
    {"tenant", cli_cmd_tenant, "tenant create NAME [--max-running N]: a tenant and its admin key"},
};

static int usage(void)
{
    fprintf(stderr, "usage: flowd [--data DIR | --database URL | --url API_URL] COMMAND [options]\n"
                    "  --url: enqueue, status, event and tenant over the HTTP API (FLOWD_API_KEY)\n"
                    "\ncommands:\n");
    for (size_t i = 0; i < ENG_ARRAY_LEN(commands); i++)
        fprintf(stderr, "  %-9s %s\n", commands[i].name, commands[i].help);
    return 2;
}

int main(int argc, char **argv)
{
    eng_mem_init();
    eng_log_init();
    eng_httpc_global_init();
    eng_step_register_builtins();
    step_register_all();
    cli_env env = {0};
    argc = cli_env_parse(&env, argc - 1, argv + 1);
    argv++;
    const char *api_url = cli_api_url_parse(&argc, argv);
    int status = 2;
    if (argc < 1) {
        status = usage();
    } else if (api_url) {
        status = cli_api_main(api_url, argc, argv);
    } else {
        size_t i = 0;
        while (i < ENG_ARRAY_LEN(commands) && strcmp(commands[i].name, argv[0]) != 0)
            i++;
        status = i < ENG_ARRAY_LEN(commands) ? commands[i].run(&env, argc, argv) : usage();
    }
    cli_env_close(&env);
    eng_httpc_global_cleanup();
    return status;
}
