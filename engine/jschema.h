/* engine/jschema.h: JSON Schema validation, recursive, for the keywords structured-output
 * schemas use.
 *
 * Supported (draft 7 / 2020-12 meaning where they agree): type, enum, const, properties,
 * required, additionalProperties, items (one schema for every item), minItems, maxItems,
 * uniqueItems, minProperties, maxProperties, minLength, maxLength (in code points), pattern,
 * minimum, maximum, exclusiveMinimum, exclusiveMaximum (numbers), allOf, anyOf, oneOf, not,
 * boolean schemas, and $ref to a JSON pointer inside the same document ("#", "#/$defs/x",
 * "#/definitions/x"). Annotations (title, description, default, examples, $comment, $schema,
 * readOnly, writeOnly, deprecated) are accepted and have no effect. Anything else is refused when
 * the schema is compiled, never ignored: format, $id, tuple items, patternProperties,
 * dependencies, if/then/else, ..., and assertions next to a $ref (draft 7 ignores them, 2019-09
 * applies them: a schema that depends on which is refused).
 *
 * pattern is matched with PCRE2 (UTF mode, $ only at the very end), which reads the regular
 * expressions schemas are written in (ECMA-262: \d, \w, classes, lookahead) the same way for
 * everything but ECMA-only syntax such as \cX in classes or named groups written (?<n>) vs
 * (?P<n>); a pattern PCRE2 cannot compile is refused with its message. */
#pragma once

#include <jansson.h>

#include "engine/err.h"

typedef struct jschema jschema;

/* Checks schema (borrowed; the compiled form keeps a reference) and compiles its patterns. On
 * failure returns ENG_EINVAL with err->field = ptr followed by the JSON pointer of the offending
 * keyword inside the schema, and *out untouched. */
eng_rc jschema_compile(const json_t *schema, const char *ptr, jschema **out, eng_err *err);

/* ENG_OK when instance is valid. Otherwise ENG_EINVAL with err->field = base followed by the JSON
 * pointer of the first offending value inside instance (for a missing required member: where it
 * should be) and err->msg the reason. */
eng_rc jschema_validate(const jschema *s, const json_t *instance, const char *base, eng_err *err);

/* NULL-safe. */
void jschema_free(jschema *s);

/* JSON Schema equality (enum, const, uniqueItems): numbers by value (1 equals 1.0), objects
 * regardless of member order. */
int jschema_equal(const json_t *a, const json_t *b);
