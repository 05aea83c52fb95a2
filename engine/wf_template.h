/* engine/wf_template.h: JSON templates of workflow definitions ({{input.lead.email}}).
 *
 * A template is any JSON value; only strings are templated (object keys are not). Inside a string,
 * {{ expr }} is replaced, where
 *
 *     expr    := path ( '|' 'default' ':' literal )?
 *     path    := ident ( '.' seg | '[' digits ']' )*       e.g. steps.research.output.items[0].url
 *     seg     := [A-Za-z0-9_-]+   (all digits: an array index when the value is an array)
 *     ident   := [A-Za-z_][A-Za-z0-9_-]*
 *     literal := any JSON value (a string literal may contain "}}")
 *
 * A string that is exactly one {{ expr }} (nothing around it) becomes the value itself, keeping its
 * JSON type. Otherwise each {{ expr }} is rendered as text: strings as they are, other values as
 * compact JSON. The default applies when the path is missing or its value is null.
 *
 * The render context is {"input": ..., "steps": {"KEY": {"output": ...}}, "run": {"id": ...},
 * "item": ..., "index": ...}; the renderer itself does not police which roots a template uses
 * (wf_def does, at registration). Everything here is pure and thread-safe. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "engine/err.h"

#define WF_PATH_MAX         1024       /* longest path inside {{ }} */
#define WF_TEMPLATE_MAX_OUT (4u << 20) /* longest string one embedded rendering may produce */

/* Renders tmpl against ctx into *out (new reference). ENG_EINVAL on a syntax error or a missing
 * path without default, with err->field = the JSON pointer inside tmpl ("" for tmpl itself) and a
 * message naming the path; ENG_ETOOBIG when a rendered string would exceed WF_TEMPLATE_MAX_OUT.
 * *out is untouched on error. */
eng_rc wf_template_render(const json_t *tmpl, const json_t *ctx, json_t **out, eng_err *err);

/* wf_template_render for one string: *out is the typed value or a new string. */
eng_rc wf_template_render_string(const char *s, const json_t *ctx, json_t **out, eng_err *err);

/* Called once per path referenced. path is NUL-terminated and only valid during the call; ptr is
 * the JSON pointer of the string holding it. A non-OK return stops the walk and is returned. */
typedef eng_rc wf_template_ref_cb(void *arg, const char *path, const char *ptr, eng_err *err);

/* Walks tmpl (whose own pointer is ptr) and calls cb for every path in every string. ENG_EINVAL
 * on a syntax error (unclosed {{, empty expression, bad path, bad default literal) naming the
 * pointer of the string. */
eng_rc wf_template_refs(const json_t *tmpl, const char *ptr, wf_template_ref_cb *cb, void *arg,
                        eng_err *err);

/* As wf_template_refs, for the paths rendering cannot do without: those without a default. */
eng_rc wf_template_required(const json_t *tmpl, const char *ptr, wf_template_ref_cb *cb, void *arg,
                            eng_err *err);

/* True when s contains "{{" (i.e. is a template rather than a literal). */
bool wf_template_is_templated(const char *s);

/* ---- paths, shared with wf_cond ---- */

/* True when path[0..len) is a syntactically valid path (grammar above, at most WF_PATH_MAX). */
bool wf_path_valid(const char *path, size_t len);

/* The value at path (len bytes, must be valid) inside ctx, borrowed; NULL when missing. */
const json_t *wf_path_lookup(const json_t *ctx, const char *path, size_t len);

/* Appends "/" + the RFC 6901 escape of key to the pointer base; returns a new string. */
char *wf_ptr_join(const char *base, const char *key);
/* As wf_ptr_join with an array index. */
char *wf_ptr_join_idx(const char *base, size_t idx);
