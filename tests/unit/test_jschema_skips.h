/* tests/unit/test_jschema_skips.h: the draft 7 case groups test_jschema does not run, each because
 * its schema needs what engine/jschema refuses (the reason is part of the refusal's message). */
{"properties", "properties, patternProperties, additionalProperties interaction",
 "\"patternProperties\""},
{"additionalProperties", "additionalProperties being false does not allow other properties",
 "\"patternProperties\""},
{"additionalProperties", "non-ASCII pattern with additionalProperties", "\"patternProperties\""},
{"items", "an array of schemas for items", "tuple form"},
{"items", "items with boolean schemas", "tuple form"},
{"ref", "relative pointer ref to array", "tuple form"},
/* its $ref targets sit under unknown keywords at the root ("tilda~field") */
{"ref", "escaped pointer ref", "unsupported JSON Schema keyword \"tilda~field\""},
/* draft 7 ignores maxItems next to $ref; jschema refuses rather than pick a draft's meaning */
{"ref", "ref overrides any sibling keywords", "next to $ref"},
/* remote references (the draft 7 meta-schema) and $id base URIs */
{"ref", "remote ref, containing refs itself", "does not point into this schema"},
{"ref", "Recursive references between schemas", "\"$id\""},
{"definitions", "valid definition", "does not point into this schema"},
{"definitions", "invalid definition", "does not point into this schema"},
