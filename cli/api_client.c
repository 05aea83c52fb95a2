/* cli/api_client.c: the client of a running server's HTTP API (a blocking libcurl easy client: the
 * command line is not an event loop) and the commands that use it with --url / FLOWD_URL (enqueue,
 * status, event, cancel, retry, tenant); `flowd tenant` and `flowd key`, which work on the
 * database too. */
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "engine/buf.h"
#include "engine/mem.h"
#include "engine/rand.h"

#define CLI_API_MAX_RESPONSE (64 * 1024 * 1024)

static size_t api_collect(char *p, size_t sz, size_t n, void *arg)
{
    return eng_buf_append(arg, p, sz * n) == ENG_OK ? sz * n : 0;
}

long cli_api_request(const cli_api *api, const char *method, const char *path,
                        const json_t *body, json_t **out, eng_err *err)
{
    *out = NULL;
    CURL *h = curl_easy_init();
    if (!h)
        return eng_err_set(err, ENG_EINTERNAL, "cannot start libcurl"), 0;
    char *url = eng_xasprintf("%s%s", api->url, path);
    char *auth = eng_xasprintf("Authorization: Bearer %s", api->key);
    struct curl_slist *hl = curl_slist_append(NULL, auth);
    hl = curl_slist_append(hl, "Content-Type: application/json");
    hl = curl_slist_append(hl, "Accept: application/json");
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    eng_buf resp;
    eng_buf_init(&resp, CLI_API_MAX_RESPONSE);
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 120000L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, api_collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);
    if (text) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
    }
    long status = 0;
    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK) {
        eng_err_set(err, ENG_EHTTP, "%s %s: %s", method, url,
                    errbuf[0] ? errbuf : curl_easy_strerror(rc));
    } else {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (resp.len)
            *out = json_loadb(resp.ptr, resp.len, 0, NULL);
        if (status >= 400) {
            const json_t *e = json_object_get(*out, "error");
            const char *msg = json_string_value(json_object_get(e, "message"));
            const char *field = json_string_value(json_object_get(e, "field"));
            eng_err_set(err, status == 404 ? ENG_ENOTFOUND : ENG_EHTTP, "%s (HTTP %ld)",
                        msg ? msg : "request failed", status);
            if (field)
                snprintf(err->field, sizeof err->field, "%s", field);
            json_decref(*out);
            *out = NULL;
            status = 0;
        }
    }
    eng_buf_deinit(&resp);
    free(text);
    curl_slist_free_all(hl);
    free(auth);
    free(url);
    curl_easy_cleanup(h);
    return status;
}

void cli_print_json(const json_t *j)
{
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("%s\n", text ? text : "null");
    free(text);
}

int cli_api_command(cli_env *env, const char *method, const char *path, const json_t *body,
                    cli_show_fn *show, const void *arg)
{
    eng_err err;
    cli_api api;
    if (cli_api_open(env, true, &api, &err) != ENG_OK)
        return cli_fail(&err);
    json_t *out = NULL;
    int status = 0;
    if (!cli_api_request(&api, method, path, body, &out, &err))
        status = cli_fail(&err);
    else if (env->json && out)
        cli_print_json(out);
    else if (show)
        show(out, arg);
    json_decref(out);
    cli_api_free(&api);
    return status;
}

void cli_show_list(const json_t *out, const char *member, void (*show_one)(const json_t *item),
                   const char *empty)
{
    const json_t *items = json_object_get(out, member), *item;
    size_t i;
    json_array_foreach (items, i, item)
        show_one(item);
    if (json_array_size(items) == 0)
        printf("%s\n", empty);
}

char *cli_api_escape(const char *s)
{
    CURL *h = curl_easy_init();
    char *e = curl_easy_escape(h, s, 0);
    char *out = eng_xstrdup(e ? e : "");
    curl_free(e);
    curl_easy_cleanup(h);
    return out;
}

/* ----------------------------------------------------------------------------- commands -- */

static int api_enqueue(const cli_api *api, int argc, char **argv)
{
    static const struct option longopts[] = {{"workflow", required_argument, NULL, 'w'},
                                             {"input", required_argument, NULL, 'i'},
                                             {"priority", required_argument, NULL, 'p'},
                                             {"idempotency-key", required_argument, NULL, 'k'},
                                             {NULL, 0, NULL, 0}};
    const char *file = NULL, *input = "{}", *priority = NULL, *idem = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "w:i:p:k:", longopts, NULL)) != -1) {
        switch (ch) {
        case 'w':
            file = optarg;
            break;
        case 'i':
            input = optarg;
            break;
        case 'p':
            priority = optarg;
            break;
        case 'k':
            idem = optarg;
            break;
        default:
            return 2;
        }
    }
    if (!file) {
        cli_command_usage_error("enqueue");
        return 2;
    }
    eng_err err;
    json_error_t jerr;
    json_t *def = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
    if (!def) {
        eng_err_set(&err, ENG_EINVAL, "%s:%d:%d: %s", file, jerr.line, jerr.column, jerr.text);
        return cli_fail(&err);
    }
    json_t *in = json_loads(input, 0, &jerr);
    if (!json_is_object(in)) {
        json_decref(in);
        json_decref(def);
        eng_err_field(&err, ENG_EINVAL, "--input", "must be a JSON object");
        return cli_fail(&err);
    }
    char *end = NULL;
    long long prio = priority ? strtoll(priority, &end, 10) : 0;
    if (priority && *end) {
        json_decref(in);
        json_decref(def);
        eng_err_field(&err, ENG_EINVAL, "--priority", "must be an integer");
        return cli_fail(&err);
    }
    const char *name = json_string_value(json_object_get(def, "name"));
    if (!name) {
        json_decref(in);
        json_decref(def);
        eng_err_field(&err, ENG_EINVAL, "/name", "the workflow file needs a name");
        return cli_fail(&err);
    }
    char *seg = cli_api_escape(name);
    char *path = eng_xasprintf("/v1/workflows/%s", seg);
    json_t *out = NULL;
    json_t *run =
        json_pack("{s:s, s:o, s:I}", "workflow", name, "input", in, "priority", (json_int_t)prio);
    if (idem)
        json_object_set_new(run, "idempotency_key", json_string(idem));
    int status = 1;
    if (!cli_api_request(api, "PUT", path, def, &out, &err)) {
        status = cli_fail(&err);
        goto done;
    }
    json_object_set_new(run, "version", json_incref(json_object_get(out, "version")));
    json_decref(out);
    if (!cli_api_request(api, "POST", "/v1/runs", run, &out, &err)) {
        status = cli_fail(&err);
        goto done;
    }
    printf("%lld\n", (long long)json_integer_value(json_object_get(out, "id")));
    json_decref(out);
    status = 0;
done:
    json_decref(run);
    json_decref(def);
    free(path);
    free(seg);
    return status;
}

static int api_status(const cli_api *api, int argc, char **argv)
{
    if (argc != 2) {
        cli_command_usage_error("status");
        return 2;
    }
    eng_err err;
    char *end;
    long long id = strtoll(argv[1], &end, 10);
    if (*end || id <= 0) {
        eng_err_field(&err, ENG_EINVAL, "RUN_ID", "\"%s\" is not a run id", argv[1]);
        return cli_fail(&err);
    }
    char path[48];
    snprintf(path, sizeof path, "/v1/runs/%lld", id);
    json_t *out;
    if (!cli_api_request(api, "GET", path, NULL, &out, &err))
        return cli_fail(&err);
    cli_print_json(out);
    json_decref(out);
    return 0;
}

static int api_event(const cli_api *api, int argc, char **argv)
{
    const char *name, *key;
    json_t *d;
    int status = cli_event_args(argc, argv, &name, &key, &d);
    if (status)
        return status;
    eng_err err;
    json_t *body = json_pack("{s:s, s:s, s:o}", "name", name, "key", key, "data", d);
    json_t *out;
    long st = cli_api_request(api, "POST", "/v1/events", body, &out, &err);
    json_decref(body);
    if (!st)
        return cli_fail(&err);
    printf("{\"resumed\": %lld, \"cancelled\": %lld, \"started\": %lld}\n",
           (long long)json_integer_value(json_object_get(out, "resumed")),
           (long long)json_integer_value(json_object_get(out, "cancelled")),
           (long long)json_integer_value(json_object_get(out, "started")));
    json_decref(out);
    return 0;
}

/* Parses `tenant create NAME [--max-running N]`; 0 when fine, else the exit status. */
static int tenant_args(int argc, char **argv, const char **name, long long *max_running)
{
    static const struct option longopts[] = {{"max-running", required_argument, NULL, 'm'},
                                             {NULL, 0, NULL, 0}};
    *max_running = 0;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "m:", longopts, NULL)) != -1) {
        char *end;
        if (ch != 'm')
            return 2;
        *max_running = strtoll(optarg, &end, 10);
        if (*end || *max_running < 1) {
            eng_err err;
            eng_err_field(&err, ENG_EINVAL, "--max-running", "must be a positive integer");
            return cli_fail(&err);
        }
    }
    if (argc - optind != 2 || strcmp(argv[optind], "create") != 0) {
        cli_command_usage_error("tenant");
        return 2;
    }
    *name = argv[optind + 1];
    return 0;
}

static int api_tenant(const cli_api *api, int argc, char **argv)
{
    const char *name;
    long long max_running;
    int st = tenant_args(argc, argv, &name, &max_running);
    if (st)
        return st;
    eng_err err;
    json_t *body = json_pack("{s:s}", "name", name);
    if (max_running)
        json_object_set_new(body, "max_running", json_integer(max_running));
    json_t *tenant, *key;
    long ok = cli_api_request(api, "POST", "/v1/tenants", body, &tenant, &err);
    json_decref(body);
    if (!ok)
        return cli_fail(&err);
    body = json_pack("{s:O, s:s}", "tenant", json_object_get(tenant, "id"), "role", "admin");
    ok = cli_api_request(api, "POST", "/v1/keys", body, &key, &err);
    json_decref(body);
    if (!ok) {
        json_decref(tenant);
        return cli_fail(&err);
    }
    json_t *both = json_pack("{s:o, s:o}", "tenant", tenant, "key", key);
    cli_print_json(both);
    json_decref(both);
    return 0;
}

/* ----------------------------------------------------------------------------- entry -- */

/* Trims s and its line end; false when nothing is left. */
static bool api_trim(char *s)
{
    size_t n = strcspn(s, "\r\n");
    s[n] = '\0';
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return n > 0;
}

eng_rc cli_api_open(const cli_env *env, bool local, cli_api *api, eng_err *err)
{
    *api = (cli_api){0};
    const char *url = env->url ? env->url : local ? "http://127.0.0.1:8080" : NULL;
    if (!url)
        return eng_err_set(err, ENG_EINVAL, "no API URL: give --url URL or set FLOWD_URL");
    const char *key = getenv("FLOWD_API_KEY");
    char line[256] = "";
    char *path = eng_xasprintf("%s/api-key", env->data_dir);
    if (!key || !*key) {
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(line, sizeof line, f) && api_trim(line))
                key = line;
            fclose(f);
        }
    }
    if (!key || !*key) {
        eng_err_set(err, ENG_EINVAL, "no API key: set FLOWD_API_KEY, or give --data DIR of the "
                                     "server whose DIR/api-key to use (%s has none)", path);
        free(path);
        return ENG_EINVAL;
    }
    free(path);
    api->url = eng_xstrdup(url);
    size_t n = strlen(api->url);
    while (n > 0 && api->url[n - 1] == '/')
        api->url[--n] = '\0';
    api->key = eng_xstrdup(key);
    return ENG_OK;
}

void cli_api_free(cli_api *api)
{
    free(api->url);
    free(api->key);
    *api = (cli_api){0};
}

/* flowd cancel RUN_ID / flowd retry RUN_ID over the API: prints the run as the server has it then */
static int api_cancel_retry(const cli_api *api, int argc, char **argv)
{
    if (argc != 2) {
        cli_command_usage_error(argv[0]);
        return 2;
    }
    eng_err err;
    char *end;
    long long id = strtoll(argv[1], &end, 10);
    if (*end || id <= 0) {
        eng_err_field(&err, ENG_EINVAL, "RUN_ID", "\"%s\" is not a run id", argv[1]);
        return cli_fail(&err);
    }
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld/%s", id, argv[0]);
    json_t *out;
    if (!cli_api_request(api, "POST", path, NULL, &out, &err))
        return cli_fail(&err);
    cli_print_json(out);
    json_decref(out);
    return 0;
}

int cli_api_main(cli_env *env, int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(const cli_api *api, int argc, char **argv);
    } commands[] = {
        {"enqueue", api_enqueue}, {"status", api_status},        {"event", api_event},
        {"tenant", api_tenant},   {"cancel", api_cancel_retry}, {"retry", api_cancel_retry},
    };
    eng_err err;
    size_t i = 0;
    while (i < ENG_ARRAY_LEN(commands) && strcmp(commands[i].name, argv[0]) != 0)
        i++;
    if (i == ENG_ARRAY_LEN(commands)) {
        eng_err_set(&err, ENG_EINVAL, "%s is not available over the API", argv[0]);
        return cli_fail(&err);
    }
    cli_api api;
    if (cli_api_open(env, false, &api, &err) != ENG_OK)
        return cli_fail(&err);
    int status = commands[i].run(&api, argc, argv);
    cli_api_free(&api);
    return status;
}

/* ----------------------------------------------------------------------- direct tenant -- */

int cli_cmd_tenant(cli_env *env, int argc, char **argv)
{
    const char *name;
    long long max_running;
    int st = tenant_args(argc, argv, &name, &max_running);
    if (st)
        return st;
    eng_err err;
    char key[ENG_API_KEY_SIZE];
    long long parent;
    if (eng_rand_api_key(key, &err) != ENG_OK || cli_env_open(env, false, &err) != ENG_OK ||
        !(parent = cli_default_tenant(env, &err)))
        return cli_fail(&err);
    char parent_s[24], max_s[24];
    snprintf(parent_s, sizeof parent_s, "%lld", parent);
    snprintf(max_s, sizeof max_s, "%lld", max_running);
    /* the tenant and its first key in one transaction: no tenant nobody can reach */
    PGresult *res = cli_exec(env, "BEGIN", 0, NULL, &err);
    if (!res)
        return cli_fail(&err);
    PQclear(res);
    const char *tparams[] = {parent_s, name, max_running ? max_s : NULL};
    PGresult *tres =
        cli_exec(env, "SELECT flowd_create_tenant($1, $2, $3::integer)", 3, tparams, &err);
    if (!tres) {
        PQclear(cli_exec(env, "ROLLBACK", 0, NULL, NULL));
        if (err.rc == ENG_ECONFLICT)
            eng_err_field(&err, ENG_ECONFLICT, "NAME", "a tenant named \"%s\" exists", name);
        return cli_fail(&err);
    }
    json_t *tenant = json_loads(PQgetvalue(tres, 0, 0), 0, NULL);
    PQclear(tres);
    char id_s[24];
    snprintf(id_s, sizeof id_s, "%lld",
             (long long)json_integer_value(json_object_get(tenant, "id")));
    const char *kparams[] = {parent_s, id_s, key};
    PGresult *kres =
        cli_exec(env, "SELECT flowd_create_key($1, $2, NULL, 'admin', $3)", 3, kparams, &err);
    PGresult *commit = kres ? cli_exec(env, "COMMIT", 0, NULL, &err) : NULL;
    if (!commit) {
        PQclear(cli_exec(env, "ROLLBACK", 0, NULL, NULL));
        PQclear(kres);
        json_decref(tenant);
        return cli_fail(&err);
    }
    PQclear(commit);
    json_t *both = json_pack("{s:o, s:o}", "tenant", tenant, "key",
                             json_loads(PQgetvalue(kres, 0, 0), 0, NULL));
    PQclear(kres);
    cli_print_json(both);
    json_decref(both);
    return 0;
}

/* ----------------------------------------------------------------------------- key create -- */

int cli_cmd_key(cli_env *env, int argc, char **argv)
{
    static const struct option longopts[] = {{"tenant", required_argument, NULL, 't'},
                                             {"role", required_argument, NULL, 'r'},
                                             {"key", required_argument, NULL, 'k'},
                                             {NULL, 0, NULL, 0}};
    const char *tenant = NULL, *role = "admin", *given = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "t:r:k:", longopts, NULL)) != -1) {
        switch (ch) {
        case 't': tenant = optarg; break;
        case 'r': role = optarg; break;
        case 'k': given = optarg; break;
        default: cli_command_usage_error("key"); return 2;
        }
    }
    if (argc - optind != 1 || strcmp(argv[optind], "create") != 0) {
        cli_command_usage_error("key");
        return 2;
    }
    eng_err err;
    if (strcmp(role, "admin") != 0 && strcmp(role, "member") != 0) {
        eng_err_field(&err, ENG_EINVAL, "--role", "must be admin or member");
        return cli_fail(&err);
    }
    char key[128];
    if (given) {
        if (strlen(given) < 16 || strlen(given) >= sizeof key || strpbrk(given, " \t\r\n")) {
            eng_err_field(&err, ENG_EINVAL, "--key", "must be 16 to 127 characters without spaces");
            return cli_fail(&err);
        }
        snprintf(key, sizeof key, "%s", given);
    } else if (eng_rand_api_key(key, &err) != ENG_OK) {
        return cli_fail(&err);
    }
    long long parent;
    if (cli_env_open(env, false, &err) != ENG_OK || !(parent = cli_default_tenant(env, &err)))
        return cli_fail(&err);
    bool is_default = !tenant || strcmp(tenant, "default") == 0;
    char parent_s[24];
    snprintf(parent_s, sizeof parent_s, "%lld", parent);
    const char *params[] = {parent_s, is_default ? NULL : tenant, role, key};
    PGresult *res = cli_exec(env, "SELECT flowd_create_key($1, NULL, $2, $3, $4)", 4, params, &err);
    if (!res)
        return cli_fail(&err);
    if (PQgetisnull(res, 0, 0)) {
        PQclear(res);
        eng_err_field(&err, ENG_ENOTFOUND, "--tenant", "no tenant named \"%s\"", tenant);
        return cli_fail(&err);
    }
    json_t *out = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    PQclear(res);
    if (is_default) {
        /* a lost api-key file is replaced; an existing one is left alone */
        char *path = eng_xasprintf("%s/api-key", env->data_dir);
        FILE *f = env->database_url ? NULL : fopen(path, "wx");
        if (f) {
            fchmod(fileno(f), 0600);
            fprintf(f, "%s\n", key);
            fclose(f);
            json_object_set_new(out, "written_to", json_string(path));
        }
        free(path);
    }
    cli_print_json(out);
    json_decref(out);
    return 0;
}
