/* api/http_req.c: request accessors, target decoding and response formatting (see http.h). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "api/http.h"
#include "api/http_int.h"
#include "engine/log.h"
#include "engine/mem.h"

/* ---- request ---- */

void api_http__req_reset(api_req *r)
{
    eng_buf_reset(&r->raw);
    eng_buf_reset(&r->body);
    eng_buf_reset(&r->dec);
    r->in_token = false;
    r->nhdrs = 0;
    r->nq = 0;
    r->rawq_off = 0;
    r->method = "";
    r->head_only = false;
    r->chunked = false;
    r->abort_cb = NULL;
    r->abort_arg = NULL;
    r->id[0] = '\0';
    r->status = 0;
    r->bytes = 0;
}

/* A client's own request id is kept when it cannot smuggle anything into a header or a log. */
static bool req_id_sane(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '.' || *s == '_' || *s == ':' || *s == '-'))
            return false;
    return true;
}

/* 16 hex digits from a per-thread splitmix64 seeded by the kernel: unique enough to find a
 * request in the logs, and no system call per request. */
static void req_id_new(char *out, size_t n)
{
    static _Thread_local uint64_t state;
    static _Thread_local bool seeded;
    if (!seeded) {
        if (getrandom(&state, sizeof state, 0) != (ssize_t)sizeof state)
            state = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&state;
        seeded = true;
    }
    uint64_t z = (state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    z ^= z >> 31;
    snprintf(out, n, "%016llx", (unsigned long long)z);
}

void api_http__req_start(api_req *r)
{
    const char *given = api_req_header(r, "X-Request-Id");
    if (given && req_id_sane(given))
        snprintf(r->id, sizeof r->id, "%s", given);
    else
        req_id_new(r->id, sizeof r->id);
    r->t0 = ev_now(r->conn->srv->loop);
}

double api_req_elapsed_s(const api_req *r)
{
    ev_now_update(r->conn->srv->loop);
    return ev_now(r->conn->srv->loop) - r->t0;
}

void api_http__req_log(api_req *r, bool aborted)
{
    api_http *s = r->conn->srv;
    if (!s->opts.access_log || LOG_INFO > eng_log_threshold)
        return;
    char saved[sizeof r->id];
    const char *cur = eng_log_request();
    snprintf(saved, sizeof saved, "%s", cur ? cur : "");
    eng_log_request_set(r->id);
    ev_now_update(s->loop);
    double ms = (ev_now(s->loop) - r->t0) * 1000.0;
    const char *path = r->dec.ptr ? r->dec.ptr : "";
    log_info("http request", LOG_S("method", r->method), LOG_S("path", path),
             LOG_I("status", r->status), LOG_F("ms", ms), LOG_I("bytes", r->bytes),
             LOG_S("peer", r->conn->peer), LOG_S("outcome", aborted ? "client_gone" : "sent"));
    eng_log_request_set(saved);
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Appends the percent-decoded s[0..n) and a NUL to dec; plus_space for query strings. Returns the
 * offset of the decoded string, or (size_t)-1 for a bad escape or an encoded NUL. */
static size_t decode_into(eng_buf *dec, const char *s, size_t n, bool plus_space)
{
    size_t off = dec->len;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '%') {
            if (i + 2 >= n)
                return (size_t)-1;
            int hi = hexval(s[i + 1]);
            int lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return (size_t)-1;
            ch = (char)(hi * 16 + lo);
            i += 2;
        } else if (ch == '+' && plus_space) {
            ch = ' ';
        }
        eng_rc rc = eng_buf_append(dec, &ch, 1);
        (void)rc; /* dec is uncapped */
    }
    eng_rc rc = eng_buf_append(dec, "", 1);
    (void)rc;
    return off;
}

static const char *parse_query(api_req *r, const char *q, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t end = i;
        while (end < n && q[end] != '&')
            end++;
        if (end > i) {
            size_t eq = i;
            while (eq < end && q[eq] != '=')
                eq++;
            size_t name = decode_into(&r->dec, q + i, eq - i, true);
            size_t value = eq < end ? decode_into(&r->dec, q + eq + 1, end - eq - 1, true)
                                    : decode_into(&r->dec, "", 0, true);
            if (name == (size_t)-1 || value == (size_t)-1)
                return "bad percent-encoding in query";
            if (r->nq == r->qcap) {
                r->qcap = r->qcap ? r->qcap * 2 : 8;
                r->qoffs = eng_xrealloc(r->qoffs, r->qcap * 2 * sizeof *r->qoffs);
            }
            r->qoffs[2 * r->nq] = name;
            r->qoffs[2 * r->nq + 1] = value;
            r->nq++;
        }
        i = end + 1;
    }
    return NULL;
}

const char *api_http__req_finish(api_req *r)
{
    const char *url = r->raw.ptr ? r->raw.ptr : "";
    /* absolute-form (RFC 9112 3.2.2): keep only the path and query */
    if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) {
        const char *slash = strchr(strstr(url, "//") + 2, '/');
        url = slash ? slash : "/";
    }
    if (url[0] != '/')
        return "request target must be an absolute path";
    size_t n = strcspn(url, "?#");
    eng_buf_reset(&r->dec);
    if (decode_into(&r->dec, url, n, false) != 0)
        return "bad percent-encoding in path";
    const char *q = url[n] == '?' ? url + n + 1 : url + n;
    size_t qn = strcspn(q, "#");
    r->rawq_off = r->dec.len;
    eng_rc rc = eng_buf_append(&r->dec, q, qn);
    rc = rc == ENG_OK ? eng_buf_append(&r->dec, "", 1) : rc;
    (void)rc; /* dec is uncapped */
    return parse_query(r, q, qn);
}

const char *api_req_method(const api_req *r)
{
    return r->method;
}

const char *api_req_path(const api_req *r)
{
    return r->dec.ptr ? r->dec.ptr : "/";
}

const char *api_req_raw_query(const api_req *r)
{
    return r->dec.ptr ? r->dec.ptr + r->rawq_off : "";
}

const char *api_req_query(const api_req *r, const char *name)
{
    for (size_t i = 0; i < r->nq; i++)
        if (strcmp(r->dec.ptr + r->qoffs[2 * i], name) == 0)
            return r->dec.ptr + r->qoffs[2 * i + 1];
    return NULL;
}

const char *api_req_query_name(const api_req *r, size_t i)
{
    return i < r->nq ? r->dec.ptr + r->qoffs[2 * i] : NULL;
}

const char *api_req_query_value(const api_req *r, size_t i)
{
    return i < r->nq ? r->dec.ptr + r->qoffs[2 * i + 1] : NULL;
}

const char *api_req_header(const api_req *r, const char *name)
{
    for (size_t i = 0; i < r->nhdrs; i++)
        if (strcasecmp(r->raw.ptr + r->hdrs[2 * i], name) == 0)
            return r->raw.ptr + r->hdrs[2 * i + 1];
    return NULL;
}

bool api_req_header_at(const api_req *r, size_t i, const char **name, const char **value)
{
    if (i >= r->nhdrs)
        return false;
    *name = r->raw.ptr + r->hdrs[2 * i];
    *value = r->raw.ptr + r->hdrs[2 * i + 1];
    return true;
}

const char *api_req_body(const api_req *r, size_t *len)
{
    if (len)
        *len = r->body.len;
    return r->body.ptr ? r->body.ptr : "";
}

const char *api_req_peer(const api_req *r)
{
    return r->conn->peer;
}

const char *api_req_id(const api_req *r)
{
    return r->id;
}

/* ---- responses ---- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

static void out_add(api_conn *c, const char *s, size_t n)
{
    eng_rc rc = eng_buf_append(&c->out, s, n);
    (void)rc; /* out is uncapped */
}

static void out_str(api_conn *c, const char *s)
{
    out_add(c, s, strlen(s));
}

/* Whether r may start a response now; a misuse is a bug in the caller and is only logged, as
 * there is nobody to return an error to. */
static bool req_owed(api_req *r, enum req_state want, const char *what)
{
    if (r->st == want)
        return true;
    if (r->st != REQ_ABORTED)
        log_error("http response out of order", LOG_S("call", what), LOG_I("state", (int)r->st));
    return false;
}

/* "Date: <IMF-fixdate>\r\n" (RFC 9110 6.6.1), formatted once a second per thread. */
static const char *http_date(void)
{
    static _Thread_local time_t last = -1;
    static _Thread_local char buf[64];
    time_t now = time(NULL);
    if (now != last) {
        static const char days[][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
        static const char months[][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        struct tm tm;
        gmtime_r(&now, &tm);
        snprintf(buf, sizeof buf, "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n", days[tm.tm_wday],
                 tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                 tm.tm_sec);
        last = now;
    }
    return buf;
}

#define LEN_CHUNKED (-1)
#define LEN_NONE (-2)

static void put_head(api_req *r, int status, const char *ctype, const char *const *extra,
                     long long clen)
{
    api_conn *c = r->conn;
    bool keep = c->keepalive && !c->srv->shutting && !(clen == LEN_CHUNKED && c->http10);
    c->resp_keep = keep;
    r->status = status;
    if (!r->id[0])
        req_id_new(r->id, sizeof r->id);
    char line[128];
    int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
    out_add(c, line, (size_t)n);
    out_str(c, http_date());
    n = snprintf(line, sizeof line, "X-Request-Id: %s\r\n", r->id);
    out_add(c, line, (size_t)n);
    if (ctype && strpbrk(ctype, "\r\n"))
        ctype = "application/octet-stream";
    if (ctype) {
        out_str(c, "Content-Type: ");
        out_str(c, ctype);
        out_add(c, "\r\n", 2);
    }
    if (clen >= 0) {
        n = snprintf(line, sizeof line, "Content-Length: %lld\r\n", clen);
        out_add(c, line, (size_t)n);
    } else if (clen == LEN_CHUNKED && !c->http10) {
        out_str(c, "Transfer-Encoding: chunked\r\n");
        r->chunked = true;
    }
    for (size_t i = 0; extra && extra[i]; i++) {
        if (strpbrk(extra[i], "\r\n")) { /* no response splitting through reflected values */
            log_error("http header dropped", LOG_S("reason", "contains a line break"));
            continue;
        }
        out_str(c, extra[i]);
        out_add(c, "\r\n", 2);
    }
    if (!keep)
        out_str(c, "Connection: close\r\n");
    else if (c->http10)
        out_str(c, "Connection: keep-alive\r\n");
    out_add(c, "\r\n", 2);
}

static int sane_status(int status)
{
    if (status >= 200 && status <= 599)
        return status;
    log_error("http handler gave a bad status", LOG_I("status", status));
    return 500;
}

void api_req_respond(api_req *r, int status, const char *content_type, const char *body, size_t len,
                     const char *const *extra_headers)
{
    if (!req_owed(r, REQ_DISPATCHED, "respond"))
        return;
    status = sane_status(status);
    bool bodyless = status == 204 || status == 304;
    put_head(r, status, bodyless ? NULL : content_type, extra_headers,
             bodyless ? LEN_NONE : (long long)len);
    if (!bodyless && !r->head_only && len) {
        out_add(r->conn, body, len);
        r->bytes = len;
    }
    r->st = REQ_DONE;
    api_http__req_log(r, false);
    api_http__conn_kick(r->conn);
}

void api_req_respond_json(api_req *r, int status, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!s) {
        log_error("http response is not serializable json");
        static const char fallback[] = "{\"error\":{\"code\":\"internal\",\"message\":\"bad response\"}}";
        api_req_respond(r, 500, "application/json", fallback, sizeof fallback - 1, NULL);
        return;
    }
    api_req_respond(r, status, "application/json", s, strlen(s), NULL);
    free(s);
}

void api_req_respond_error(api_req *r, int status, const char *code, const char *msg,
                           const char *field)
{
    json_t *e = json_pack("{s:s, s:s}", "code", code ? code : "error", "message", msg ? msg : "");
    if (e && field)
        json_object_set_new(e, "field", json_string(field));
    api_req_respond_json(r, status, e ? json_pack("{s:o}", "error", e) : NULL);
}

void api_http__conn_error(api_conn *c, int status, const char *code, const char *msg)
{
    api_req *r = &c->req;
    if (!r->id[0]) { /* a refused head may be half-stored: its X-Request-Id is not looked at */
        req_id_new(r->id, sizeof r->id);
        r->t0 = ev_now(c->srv->loop);
    }
    c->keepalive = false;
    c->st = CONN_WRITING;
    r->st = REQ_DISPATCHED;
    r->head_only = false;
    r->abort_cb = NULL;
    api_req_respond_error(r, status, code, msg, NULL);
}

void api_req_stream_begin(api_req *r, int status, const char *content_type,
                          const char *const *extra_headers)
{
    if (!req_owed(r, REQ_DISPATCHED, "stream_begin"))
        return;
    put_head(r, sane_status(status), content_type, extra_headers, LEN_CHUNKED);
    r->st = REQ_STREAMING;
    api_http__conn_kick(r->conn);
}

void api_req_stream_write(api_req *r, const char *data, size_t len)
{
    if (!req_owed(r, REQ_STREAMING, "stream_write") || r->head_only || len == 0)
        return; /* an empty chunk would end the stream */
    api_conn *c = r->conn;
    if (r->chunked) {
        char size[24];
        int n = snprintf(size, sizeof size, "%zx\r\n", len);
        out_add(c, size, (size_t)n);
    }
    out_add(c, data, len);
    r->bytes += len;
    if (r->chunked)
        out_add(c, "\r\n", 2);
    api_http__conn_kick(c);
}

void api_req_stream_end(api_req *r)
{
    if (!req_owed(r, REQ_STREAMING, "stream_end"))
        return;
    if (r->chunked && !r->head_only)
        out_str(r->conn, "0\r\n\r\n");
    r->st = REQ_DONE;
    api_http__req_log(r, false);
    api_http__conn_kick(r->conn);
}

void api_req_on_abort(api_req *r, void (*cb)(void *arg), void *arg)
{
    r->abort_cb = cb;
    r->abort_arg = arg;
}

size_t api_req_pending_bytes(const api_req *r)
{
    return r->conn->out.len - r->conn->out_off;
}
