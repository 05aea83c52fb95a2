/* engine/wf_cond.h: step conditions ("when"): comparisons of template values with literals.
 *
 * Grammar (keywords are lowercase; whitespace between tokens is free):
 *
 *     expr    := or
 *     or      := and ( 'or' and )*
 *     and     := unary ( 'and' unary )*
 *     unary   := 'not' unary | '(' expr ')' | cmp
 *     cmp     := operand ( ( '==' | '!=' | '<' | '>' | '<=' | '>=' ) operand
 *                        | 'in' '[' ( literal ( ',' literal )* )? ']'
 *                        | 'exists' )?
 *     operand := path | '{{' path '}}' | literal
 *     path    := as in wf_template.h: input.lead.score, steps.k.output.items[0], item, index
 *     literal := a JSON string (double quotes), number, true, false or null
 *
 * So `not a == 1 and b` is `(not (a == 1)) and b`. Semantics:
 * - A lone operand is truthy unless it is missing, null, false, 0, or "" (empty arrays and objects
 *   are truthy).
 * - A missing path is "absent": `==` with an absent side is false (unless both are absent), `!=` is
 *   the negation of `==`, ordering comparisons and `in` are false, `exists` is false.
 * - `exists` is true when the path is present and not null.
 * - `==` compares numbers by value (1 == 1.0) and everything else structurally; `<` `>` `<=` `>=`
 *   compare two numbers by value or two strings bytewise, and are false for any other pair.
 * There is no general-purpose scripting: no arithmetic, no function calls. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "engine/err.h"
#include "engine/wf_template.h"

#define WF_COND_MAX_SRC   4096 /* longest condition source */
#define WF_COND_MAX_DEPTH 64   /* deepest nesting of parentheses and 'not' */

typedef struct wf_cond wf_cond; /* opaque, immutable after parse, shareable across threads */

/* Parses src into *out (free with wf_cond_free). ENG_EINVAL with a message giving the byte offset
 * of the problem; err->field is left empty (callers name the field). */
eng_rc wf_cond_parse(const char *src, wf_cond **out, eng_err *err);

/* Evaluates c against a render context (see wf_template.h). Missing paths are not errors. */
eng_rc wf_cond_eval(const wf_cond *c, const json_t *ctx, bool *result, eng_err *err);

/* Calls cb(arg, path, ptr, err) for every path operand, in source order; stops at the first
 * non-OK return and returns it. */
eng_rc wf_cond_refs(const wf_cond *c, wf_template_ref_cb *cb, void *arg, const char *ptr,
                    eng_err *err);

/* NULL-safe. */
void wf_cond_free(wf_cond *c);
