/* steps/provider.c: provider settings (environment + per-tenant overrides, cached), failure
 * classification and retry-after parsing shared by every provider-backed kind (see provider.h).
 *
 * The settings cache is process-wide (all worker threads) behind one mutex. A miss costs one query
 * on the asking worker's connection; concurrent misses of the same (connection, tenant, provider)
 * wait for that one query instead of sending their own, so a burst of thousands of steps claimed
 * at once costs one round trip per worker, not one per step. */
#include "steps/provider.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/clock.h"
#include "engine/db.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/secret.h"

#define PROV_MAX_RETRY_AFTER_MS 3600000LL /* a provider asking for more is capped at one hour */
#define PROV_CACHE_MAX 4096               /* entries; past it the cache is emptied */

/* ------------------------------------------------------------------------ static provider table -- */

typedef struct prov_field {
    const char *name; /* settings key */
    const char *env;  /* environment variable, NULL when none */
    bool secret;      /* never shown: redacted from every message */
} prov_field;

typedef struct prov_info {
    const char *name;
    const char *default_base; /* NULL: none (the provider needs a configured one) */
    const char *base_env;
    prov_field fields[4];     /* terminated by a NULL name */
    const char *required[3];  /* fields that must all be set for real mode; NULL-terminated */
} prov_info;

static const prov_info infos[PROV__COUNT] = {
    [PROV_OPENAI] = {"openai", "https://api.openai.com/v1", "OPENAI_BASE_URL",
                     {{"api_key", "OPENAI_API_KEY", true}}, {"api_key"}},
    [PROV_ANTHROPIC] = {"anthropic", "https://api.anthropic.com", "ANTHROPIC_BASE_URL",
                        {{"api_key", "ANTHROPIC_API_KEY", true}}, {"api_key"}},
    [PROV_OPENAI_COMPATIBLE] = {"openai_compatible", NULL, "OPENAI_COMPATIBLE_BASE_URL",
                                {{"api_key", "OPENAI_COMPATIBLE_API_KEY", true}}, {"base_url"}},
    [PROV_SENDGRID] = {"sendgrid", "https://api.sendgrid.com", "SENDGRID_BASE_URL",
                       {{"api_key", "SENDGRID_API_KEY", true}}, {"api_key"}},
    [PROV_TWILIO] = {"twilio", "https://api.twilio.com", "TWILIO_BASE_URL",
                     {{"account_sid", "TWILIO_ACCOUNT_SID", false},
                      {"auth_token", "TWILIO_AUTH_TOKEN", true},
                      {"from", "TWILIO_FROM", false}},
                     {"account_sid", "auth_token"}},
    [PROV_WHATSAPP] = {"whatsapp", "https://graph.facebook.com/v23.0", "WHATSAPP_BASE_URL",
                       {{"token", "WHATSAPP_TOKEN", true},
                        {"phone_number_id", "WHATSAPP_PHONE_NUMBER_ID", false}},
                       {"token", "phone_number_id"}},
    [PROV_HTTP] = {"http", NULL, NULL, {{NULL, NULL, false}}, {NULL}},
};

bool prov_field_secret(const char *name)
{
    static const char *const secret_names[] = {"api_key", "auth_token",   "token",  "secret",
                                               "password", "app_secret", "verify_token"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(secret_names); i++)
        if (strcmp(name, secret_names[i]) == 0)
            return true;
    return false;
}

const char *prov_name(prov_id id)
{
    return (unsigned)id < PROV__COUNT ? infos[id].name : "?";
}

bool prov_from_name(const char *name, prov_id *out)
{
    for (int i = 0; name && i < PROV__COUNT; i++) {
        if (strcmp(infos[i].name, name) == 0) {
            *out = (prov_id)i;
            return true;
        }
    }
    return false;
}

/* ---------------------------------------------------------------------------------- configs -- */

struct prov_config {
    atomic_int refs;
    prov_id id;
    bool sandbox;
    json_t *settings; /* object of strings; base_url always present unless the provider has none */
    bool tenant_base; /* the tenant chose base_url */
};

static atomic_bool allow_private_targets;

void prov_allow_private_targets(bool allow)
{
    atomic_store(&allow_private_targets, allow);
}

bool prov_public_only(const prov_config *c)
{
    return !atomic_load(&allow_private_targets) && (!c || c->tenant_base);
}

bool prov_config_sandbox(const prov_config *c)
{
    return c->sandbox;
}

const char *prov_config_get(const prov_config *c, const char *field)
{
    return json_string_value(json_object_get(c->settings, field));
}

char *prov_config_url(const prov_config *c, const char *path)
{
    const char *base = prov_config_get(c, "base_url");
    if (!base)
        base = infos[c->id].default_base ? infos[c->id].default_base : "http://127.0.0.1";
    return eng_xasprintf("%s%s", base, path ? path : "");
}

prov_config *prov_config_ref(prov_config *c)
{
    atomic_fetch_add(&c->refs, 1);
    return c;
}

void prov_config_free(prov_config *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    json_decref(c->settings);
    free(c);
}

static void settings_set(json_t *settings, const char *name, const char *value)
{
    if (!value || !*value)
        return;
    size_t n = strlen(value);
    /* base URLs are joined with paths that start with '/' */
    if (strcmp(name, "base_url") == 0)
        while (n > 0 && value[n - 1] == '/')
            n--;
    json_object_set_new(settings, name, json_stringn(value, n));
}

prov_config *prov_config_merge(prov_id id, const json_t *tenant_settings)
{
    const prov_info *pi = &infos[id];
    prov_config *c = eng_xcalloc(1, sizeof *c);
    atomic_init(&c->refs, 1);
    c->id = id;
    c->settings = json_object();
    bool tenant_base = json_is_string(json_object_get(tenant_settings, "base_url"));
    c->tenant_base = tenant_base;
    if (pi->default_base)
        settings_set(c->settings, "base_url", pi->default_base);
    if (pi->base_env)
        settings_set(c->settings, "base_url", getenv(pi->base_env));
    for (const prov_field *f = pi->fields; f->name; f++) {
        /* an operator's secret never goes to a base URL the tenant chose */
        if (f->secret && tenant_base)
            continue;
        if (f->env)
            settings_set(c->settings, f->name, getenv(f->env));
    }
    const char *k;
    json_t *v;
    json_object_foreach ((json_t *)tenant_settings, k, v) {
        if (json_is_string(v))
            settings_set(c->settings, k, json_string_value(v));
    }
    c->sandbox = id != PROV_HTTP;
    for (int i = 0; pi->required[i]; i++) {
        if (!prov_config_get(c, pi->required[i]))
            break;
        if (!pi->required[i + 1])
            c->sandbox = false;
    }
    return c;
}

prov_config *prov_config_from_env(prov_id id)
{
    return prov_config_merge(id, NULL);
}

/* ------------------------------------------------------------------------------- redaction -- */

static bool is_token_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '-' || ch == '_' || ch == '.' || ch == '+' ||
           ch == '/' || ch == '=' || ch == '%';
}

/* Case-insensitive strstr. */
static char *find_ci(char *hay, const char *needle)
{
    size_t nl = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, nl) == 0)
            return hay;
    return NULL;
}

/* Masks the token following every marker (any case) in place, keeping the marker. boundary: the
 * marker must not continue a word ("key=" is not found inside "monkey="). */
static void mask_after(char *s, const char *marker, bool boundary)
{
    size_t ml = strlen(marker);
    for (char *p = find_ci(s, marker); p; p = find_ci(p + 1, marker)) {
        if (boundary && p > s && (isalnum((unsigned char)p[-1]) || p[-1] == '_' || p[-1] == '-'))
            continue;
        char *q = p + ml;
        while (*q == ' ' || *q == '"' || *q == '\'')
            q++;
        char *e = q;
        while (*e && is_token_char(*e) && *e != '*')
            e++;
        if (e - q < 4)
            continue;
        memmove(q + 3, e, strlen(e) + 1);
        memcpy(q, "***", 3);
    }
}

static char *replace_all(char *s, const char *needle)
{
    size_t nl = needle ? strlen(needle) : 0;
    if (nl < 4) /* a too-short "secret" would mangle ordinary words */
        return s;
    char *p;
    while ((p = strstr(s, needle))) {
        char *out = eng_xasprintf("%.*s***%s", (int)(p - s), s, p + nl);
        free(s);
        s = out;
    }
    return s;
}

char *prov_basic_credentials(const prov_config *c)
{
    const char *user = prov_config_get(c, "account_sid");
    const char *pass = prov_config_get(c, "auth_token");
    char *plain = eng_xasprintf("%s:%s", user ? user : "", pass ? pass : "");
    size_t n = strlen(plain);
    unsigned char *enc = eng_xmalloc(4 * ((n + 2) / 3) + 1);
    EVP_EncodeBlock(enc, (const unsigned char *)plain, (int)n);
    explicit_bzero(plain, n);
    free(plain);
    return (char *)enc;
}

/* How every credential flowd sends can come back in a provider's text: the authorization
 * schemes and API-key headers (any case, in echoed requests and curl's messages) and the query
 * or form fields that carry keys. */
static const struct {
    const char *marker;
    bool boundary;
} masks[] = {
    {"Bearer ", false},  {"Basic ", false},      {"sk-", true},       {"SG.", true},
    {"x-api-key:", true}, {"api-key:", true},    {"x-goog-api-key:", true},
    {"key=", true},      {"api_key=", true},     {"apikey=", true},   {"access_token=", true},
    {"auth_token=", true}, {"token=", true},     {"secret=", true},   {"password=", true},
};

char *prov_redact(const prov_config *c, const char *text)
{
    char *s = eng_xstrdup(text ? text : "");
    if (c) {
        const char *k;
        json_t *v;
        json_object_foreach (c->settings, k, v)
            if (prov_field_secret(k))
                s = replace_all(s, json_string_value(v));
        /* HTTP Basic sends the secret only inside base64(user:secret) */
        if (prov_config_get(c, "auth_token")) {
            char *b = prov_basic_credentials(c);
            s = replace_all(s, b);
            explicit_bzero(b, strlen(b));
            free(b);
        }
    }
    for (size_t i = 0; i < ENG_ARRAY_LEN(masks); i++)
        mask_after(s, masks[i].marker, masks[i].boundary);
    return s;
}

/* -------------------------------------------------------------------------- settings cache -- */

typedef struct cache_entry {
    int64_t tenant;
    prov_id id;
    int64_t expires_ms; /* monotonic */
    prov_config *cfg;   /* one reference held by the cache */
} cache_entry;

struct prov_load {
    prov_config_cb *cb;
    void *arg;
    bool cancelled;
    prov_load *next;
};

typedef struct fetch {
    struct eng_db *db; /* the connection (and so the loop) the query and its waiters belong to */
    int64_t tenant;
    prov_id id;
    prov_load *waiters; /* LIFO; called in order of arrival */
    struct fetch *next;
} fetch;

static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static cache_entry *cache;
static size_t ncache, cache_cap;
static fetch *fetches;

/* With cache_mu held: a new reference or NULL. */
static prov_config *cache_find_locked(int64_t tenant, prov_id id, int64_t now)
{
    for (size_t i = 0; i < ncache; i++) {
        cache_entry *e = &cache[i];
        if (e->tenant == tenant && e->id == id) {
            if (e->expires_ms > now)
                return prov_config_ref(e->cfg);
            prov_config_free(e->cfg);
            *e = cache[--ncache];
            return NULL;
        }
    }
    return NULL;
}

static void cache_put_locked(int64_t tenant, prov_id id, prov_config *cfg, int64_t now)
{
    for (size_t i = 0; i < ncache; i++) {
        if (cache[i].tenant == tenant && cache[i].id == id) {
            prov_config_free(cache[i].cfg);
            cache[i].cfg = prov_config_ref(cfg);
            cache[i].expires_ms = now + PROV_CONFIG_TTL_MS;
            return;
        }
    }
    if (ncache >= PROV_CACHE_MAX) {
        for (size_t i = 0; i < ncache; i++)
            prov_config_free(cache[i].cfg);
        ncache = 0;
    }
    if (ncache == cache_cap) {
        cache_cap = cache_cap ? cache_cap * 2 : 16;
        cache = eng_xrealloc(cache, cache_cap * sizeof *cache);
    }
    cache[ncache++] = (cache_entry){tenant, id, now + PROV_CONFIG_TTL_MS, prov_config_ref(cfg)};
}

void prov_config_cache_clear(void)
{
    pthread_mutex_lock(&cache_mu);
    for (size_t i = 0; i < ncache; i++)
        prov_config_free(cache[i].cfg);
    free(cache);
    cache = NULL;
    ncache = cache_cap = 0;
    pthread_mutex_unlock(&cache_mu);
}

static void fetch_done(void *arg, const eng_err *err, const PGresult *res)
{
    fetch *f = arg;
    prov_config *cfg = NULL;
    eng_err open_err;
    if (!err) {
        json_t *settings = NULL;
        if (res && PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
            settings = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
        /* a secret that cannot be opened fails the attempt: falling back to the environment's
         * credentials or the sandbox would send from the wrong account */
        if (json_is_object(settings) && sec_open_object(settings, &open_err) != ENG_OK)
            err = &open_err;
        else
            cfg = prov_config_merge(f->id, json_is_object(settings) ? settings : NULL);
        json_decref(settings);
    }
    pthread_mutex_lock(&cache_mu);
    if (cfg)
        cache_put_locked(f->tenant, f->id, cfg, eng_clock_mono_ms());
    for (fetch **pp = &fetches; *pp; pp = &(*pp)->next) {
        if (*pp == f) {
            *pp = f->next;
            break;
        }
    }
    pthread_mutex_unlock(&cache_mu);
    /* reverse the LIFO so steps proceed in the order they asked */
    prov_load *list = NULL;
    while (f->waiters) {
        prov_load *l = f->waiters;
        f->waiters = l->next;
        l->next = list;
        list = l;
    }
    free(f);
    while (list) {
        prov_load *l = list;
        list = l->next;
        if (!l->cancelled)
            l->cb(l->arg, err, cfg ? prov_config_ref(cfg) : NULL);
        free(l);
    }
    prov_config_free(cfg);
}

prov_config *prov_config_load(eng_step_ctx *ctx, prov_id id, prov_config_cb *cb, void *arg,
                              prov_load **pending)
{
    int64_t tenant = eng_step_tenant_id(ctx);
    struct eng_db *db = eng_step_db(ctx);
    *pending = NULL;
    if (id == PROV_HTTP)
        return prov_config_merge(id, NULL);
    pthread_mutex_lock(&cache_mu);
    prov_config *hit = cache_find_locked(tenant, id, eng_clock_mono_ms());
    if (hit) {
        pthread_mutex_unlock(&cache_mu);
        return hit;
    }
    prov_load *l = eng_xcalloc(1, sizeof *l);
    l->cb = cb;
    l->arg = arg;
    fetch *f = fetches;
    while (f && !(f->db == db && f->tenant == tenant && f->id == id))
        f = f->next;
    bool send = !f;
    if (!f) {
        f = eng_xcalloc(1, sizeof *f);
        f->db = db;
        f->tenant = tenant;
        f->id = id;
        f->next = fetches;
        fetches = f;
    }
    l->next = f->waiters;
    f->waiters = l;
    pthread_mutex_unlock(&cache_mu);
    if (send) {
        char tenant_s[24];
        snprintf(tenant_s, sizeof tenant_s, "%lld", (long long)tenant);
        const char *params[] = {tenant_s, prov_name(id)};
        eng_db_query(db,
                     "SELECT settings FROM provider_settings WHERE tenant_id = $1 AND provider = $2",
                     2, params, fetch_done, f);
    }
    *pending = l;
    return NULL;
}

void prov_load_cancel(prov_load *l)
{
    if (l)
        l->cancelled = true; /* freed by fetch_done, which still owns it */
}

/* ---------------------------------------------------------------------- retry-after parsing -- */

bool prov_parse_go_duration(const char *s, int64_t *ms)
{
    if (!s || !*s)
        return false;
    double total_ms = 0;
    const char *p = s;
    if (strcmp(p, "0") == 0) {
        *ms = 0;
        return true;
    }
    while (*p) {
        char *end;
        if (!isdigit((unsigned char)*p) && *p != '.')
            return false;
        double v = strtod(p, &end);
        if (end == p)
            return false;
        p = end;
        double unit;
        if (strncmp(p, "ms", 2) == 0) {
            unit = 1, p += 2;
        } else if (strncmp(p, "us", 2) == 0 || strncmp(p, "\xc2\xb5s", 3) == 0) {
            unit = 0.001, p += (*p == 'u') ? 2 : 3;
        } else if (strncmp(p, "ns", 2) == 0) {
            unit = 0.000001, p += 2;
        } else if (*p == 'h') {
            unit = 3600000, p++;
        } else if (*p == 'm') {
            unit = 60000, p++;
        } else if (*p == 's') {
            unit = 1000, p++;
        } else {
            return false;
        }
        total_ms += v * unit;
    }
    int64_t r = (int64_t)total_ms;
    if ((double)r < total_ms)
        r++;
    *ms = r;
    return true;
}

static bool header_is_zero(const eng_http_call *call, const char *name)
{
    const char *v = eng_http_call_header(call, name);
    if (!v)
        return false;
    char *end;
    double d = strtod(v, &end);
    return end != v && d <= 0;
}

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

int64_t prov_retry_after_ms(const eng_http_call *call, int64_t now_ms)
{
    if (!call)
        return 0;
    const char *v = eng_http_call_header(call, "retry-after-ms");
    char *end;
    if (v) {
        double d = strtod(v, &end);
        if (end != v && d >= 0)
            return (int64_t)d + (d > (double)(int64_t)d);
    }
    v = eng_http_call_header(call, "retry-after");
    if (v) {
        double d = strtod(v, &end);
        while (end && *end == ' ')
            end++;
        if (end != v && !*end && d >= 0)
            return (int64_t)(d * 1000.0 + 0.999);
        time_t t = curl_getdate(v, NULL);
        if (t > 0)
            return max64(0, (int64_t)t * 1000 - now_ms);
    }
    int64_t wait = 0, ms;
    /* OpenAI: Go durations until the exhausted budget refills */
    if (header_is_zero(call, "x-ratelimit-remaining-requests") &&
        prov_parse_go_duration(eng_http_call_header(call, "x-ratelimit-reset-requests"), &ms))
        wait = max64(wait, ms);
    if (header_is_zero(call, "x-ratelimit-remaining-tokens") &&
        prov_parse_go_duration(eng_http_call_header(call, "x-ratelimit-reset-tokens"), &ms))
        wait = max64(wait, ms);
    /* Anthropic: RFC 3339 instants */
    static const char *const anth[] = {"requests", "tokens", "input-tokens", "output-tokens"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(anth); i++) {
        char rem[64], reset[64];
        snprintf(rem, sizeof rem, "anthropic-ratelimit-%s-remaining", anth[i]);
        snprintf(reset, sizeof reset, "anthropic-ratelimit-%s-reset", anth[i]);
        const char *r = eng_http_call_header(call, reset);
        int64_t at;
        if (r && header_is_zero(call, rem) && eng_time_parse_rfc3339(r, &at, NULL) == ENG_OK)
            wait = max64(wait, at - now_ms);
    }
    /* SendGrid: epoch seconds */
    v = eng_http_call_header(call, "x-ratelimit-reset");
    if (v && header_is_zero(call, "x-ratelimit-remaining")) {
        long long epoch = strtoll(v, &end, 10);
        if (end != v && epoch > 0)
            wait = max64(wait, epoch * 1000 - now_ms);
    }
    return wait;
}

/* ---------------------------------------------------------------------------- classification -- */

static bool nothing_sent(const eng_err *err)
{
    /* curl's texts for failures before any request byte went out (resolve/connect) */
    static const char *const marks[] = {"resolve", "Could not connect", "Couldn't connect",
                                        "Failed to connect", "onnection refused",
                                        "Connection timed out", "Connection timeout"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(marks); i++)
        if (strstr(err->msg, marks[i]))
            return true;
    return false;
}

/* Reads the provider's own error code and message out of an error body; the message is redacted
 * whole before it is cut to msglen, so a cut cannot leave part of a secret behind. */
static void parse_error_body(const prov_config *cfg, prov_id id, const char *body, char *code,
                             size_t codelen, char *msg, size_t msglen)
{
    code[0] = msg[0] = '\0';
    json_t *j = json_loads(body, 0, NULL);
    if (!j)
        return;
    json_t *e = json_object_get(j, "error");
    const json_t *c = NULL, *m = NULL;
    if (id == PROV_TWILIO) {
        c = json_object_get(j, "code");
        m = json_object_get(j, "message");
    } else if (id == PROV_SENDGRID) {
        m = json_object_get(json_array_get(json_object_get(j, "errors"), 0), "message");
    } else if (json_is_object(e)) {
        /* OpenAI/compatible: error.code, else error.type; Anthropic: error.type; Graph: code */
        c = json_object_get(e, "code");
        if (!json_is_string(c) && !json_is_integer(c))
            c = json_object_get(e, "type");
        m = json_object_get(e, "message");
    } else if (json_is_string(e)) {
        m = e;
    }
    if (json_is_string(c))
        snprintf(code, codelen, "%s", json_string_value(c));
    else if (json_is_integer(c))
        snprintf(code, codelen, "%lld", (long long)json_integer_value(c));
    if (json_is_string(m)) {
        char *red = prov_redact(cfg, json_string_value(m));
        snprintf(msg, msglen, "%s", red);
        free(red);
    }
    /* OpenAI marks quota exhaustion in type as well as code */
    json_t *type = json_is_object(e) ? json_object_get(e, "type") : NULL;
    if (json_is_string(type) && strcmp(json_string_value(type), "insufficient_quota") == 0)
        snprintf(code, codelen, "insufficient_quota");
    json_decref(j);
}

static void set_msg(prov_outcome *out, const prov_config *cfg, const char *fmt, ...)
    ENG_PRINTF(3, 4);
static void set_msg(prov_outcome *out, const prov_config *cfg, const char *fmt, ...)
{
    char raw[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    char *red = prov_redact(cfg, raw);
    snprintf(out->msg, sizeof out->msg, "%s", red);
    free(red);
}

static prov_class classify_status(prov_id id, bool send, long status, const char *pcode)
{
    long n = *pcode ? strtol(pcode, NULL, 10) : -1;
    if (id == PROV_WHATSAPP && n >= 0) {
        if (n == 4 || n == 80007 || n == 130429 || n == 131056)
            return PROV_RETRYABLE;
        if (n == 131000 || n == 2 || n == 133004)
            return PROV_AMBIGUOUS;
    }
    if (id == PROV_TWILIO && n == 20429)
        return PROV_RETRYABLE;
    if (strcmp(pcode, "insufficient_quota") == 0)
        return PROV_PERMANENT;
    if (status == 408 || status == 409 || status == 429)
        return PROV_RETRYABLE;
    if (status >= 500)
        return send ? PROV_AMBIGUOUS : PROV_RETRYABLE;
    return PROV_PERMANENT;
}

prov_class prov_classify(const prov_config *cfg, prov_id id, bool send, const eng_err *err,
                         const eng_http_response *resp, const eng_http_call *call, int64_t now_ms,
                         prov_outcome *out)
{
    memset(out, 0, sizeof *out);
    const char *pname = prov_name(id);
    eng_metrics_provider_request(pname, err || !resp ? 0 : resp->status,
                                 err || !resp ? -1 : resp->total_ms);
    if (err || !resp) {
        eng_rc rc = err ? err->rc : ENG_EHTTP;
        const char *text = err ? err->msg : "no response";
        if (rc == ENG_ETOOBIG) {
            out->cls = PROV_PERMANENT;
            snprintf(out->code, sizeof out->code, "response_too_big");
        } else if (rc == ENG_EINVAL) { /* public_only refused the target; nothing was sent */
            out->cls = PROV_PERMANENT;
            snprintf(out->code, sizeof out->code, "address_not_allowed");
        } else if (err && nothing_sent(err)) {
            out->cls = PROV_RETRYABLE;
            snprintf(out->code, sizeof out->code, "connect_error");
        } else {
            out->cls = send ? PROV_AMBIGUOUS : PROV_RETRYABLE;
            snprintf(out->code, sizeof out->code, "%s",
                     rc == ENG_ETIMEOUT ? "timeout" : "transport_error");
        }
        set_msg(out, cfg, "%s: %s", pname, text);
        eng_metrics_provider_error(pname, out->code);
        return out->cls;
    }
    out->status = resp->status;
    if (resp->status >= 200 && resp->status < 300) {
        out->cls = PROV_OK;
        return PROV_OK;
    }
    char pmsg[200];
    parse_error_body(cfg, id, resp->body, out->provider_code, sizeof out->provider_code, pmsg,
                     sizeof pmsg);
    out->cls = classify_status(id, send, resp->status, out->provider_code);
    /* the LLM providers' explicit override (provider-apis.md §0) */
    const char *xsr = call && id != PROV_HTTP && !send ? eng_http_call_header(call, "x-should-retry")
                                                       : NULL;
    if (xsr && strcmp(xsr, "true") == 0 && out->cls == PROV_PERMANENT &&
        strcmp(out->provider_code, "insufficient_quota") != 0)
        out->cls = PROV_RETRYABLE;
    else if (xsr && strcmp(xsr, "false") == 0)
        out->cls = PROV_PERMANENT;
    if (strcmp(out->provider_code, "insufficient_quota") == 0)
        snprintf(out->code, sizeof out->code, "insufficient_quota");
    else
        snprintf(out->code, sizeof out->code, "http_%ld", resp->status);
    if (*pmsg)
        set_msg(out, cfg, "%s %ld%s%s: %s", pname, resp->status, *out->provider_code ? " " : "",
                out->provider_code, pmsg);
    else
        set_msg(out, cfg, "%s answered %ld", pname, resp->status);
    eng_metrics_provider_error(pname, out->code);
    if (out->cls != PROV_PERMANENT) {
        int64_t ra = prov_retry_after_ms(call, now_ms);
        out->retry_after_ms = ra > PROV_MAX_RETRY_AFTER_MS ? PROV_MAX_RETRY_AFTER_MS : ra;
    }
    return out->cls;
}

void prov_fail_step(eng_step_ctx *ctx, const prov_outcome *o)
{
    eng_step_fail(ctx, o->cls == PROV_PERMANENT, o->code, o->msg, o->retry_after_ms);
}
