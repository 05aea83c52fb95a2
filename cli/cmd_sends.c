/* cli/cmd_sends.c: flowd send settle SEND_KEY sent|not-sent [--message-id ID]: an operator's
 * answer for a message whose outcome is unknown (POST /v1/sends/{send_key}/outcome). The waiting
 * step goes on with it: "sent" takes the message as delivered to the provider, "not-sent" sends
 * it. The send key is the one the step's error (code unknown) names. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/mem.h"

static void show_outcome(const json_t *out, const void *arg)
{
    (void)arg;
    const char *mid = json_string_value(json_object_get(out, "message_id"));
    printf("send %s: %s%s%s\n", json_string_value(json_object_get(out, "send_key")),
           json_string_value(json_object_get(out, "state")), mid ? ", message " : "",
           mid ? mid : "");
}

int cli_cmd_send(cli_env *env, int argc, char **argv)
{
    static const struct option longopts[] = {{"message-id", required_argument, NULL, 'm'},
                                             {NULL, 0, NULL, 0}};
    const char *message_id = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "m:", longopts, NULL)) != -1) {
        if (ch != 'm') {
            cli_command_usage_error("send");
            return 2;
        }
        message_id = optarg;
    }
    if (argc - optind != 3 || strcmp(argv[optind], "settle") != 0 ||
        (strcmp(argv[optind + 2], "sent") != 0 && strcmp(argv[optind + 2], "not-sent") != 0) ||
        (message_id && strcmp(argv[optind + 2], "sent") != 0)) {
        cli_command_usage_error("send");
        return 2;
    }
    char *key = cli_api_escape(argv[optind + 1]);
    char *path = eng_xasprintf("/v1/sends/%s/outcome", key);
    json_t *body = json_pack("{s:s}", "outcome",
                             strcmp(argv[optind + 2], "sent") == 0 ? "sent" : "not_sent");
    if (message_id)
        json_object_set_new(body, "message_id", json_string(message_id));
    int status = cli_api_command(env, "POST", path, body, show_outcome, NULL);
    json_decref(body);
    free(path);
    free(key);
    return status;
}
