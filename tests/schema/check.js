// tests/schema/check.js SOURCE_DIR: validates api/workflow.schema.json with ajv (draft 2020-12,
// strict mode, less ajv's own strictTypes and strictRequired, which flag sound 2020-12 such as a
// "required" in a oneOf branch), then checks that every shipped workflow (workflows/*.json) and every definition
// in docs/workflows.md (```json workflow blocks) validates against it, and that every known-bad
// definition in tests/schema/bad.json is refused. Prints one line per failure; exit 1 on any.
'use strict';
const fs = require('fs');
const path = require('path');
const Ajv2020 = require('ajv/dist/2020');

const root = process.argv[2];
const schema = JSON.parse(fs.readFileSync(path.join(root, 'api/workflow.schema.json'), 'utf8'));
const ajv = new Ajv2020({strict: true, strictTypes: false, strictRequired: false});
const validate = ajv.compile(schema);
let failures = 0, checked = 0;
const fail = (msg) => { failures++; console.log('FAIL ' + msg); };

function docBlocks(file) {
  // fenced blocks whose info string is "json workflow" (the same rule as tests/integration/test_docs.c)
  const text = fs.readFileSync(file, 'utf8');
  const out = [];
  const re = /^```json workflow[^\n]*\n([\s\S]*?)^```$/gm;
  let m;
  while ((m = re.exec(text)) !== null)
    out.push({where: `${file}:${text.slice(0, m.index).split('\n').length}`, body: m[1]});
  return out;
}

const good = [];
for (const f of fs.readdirSync(path.join(root, 'workflows')).filter((f) => f.endsWith('.json')).sort())
  good.push({where: `workflows/${f}`, body: fs.readFileSync(path.join(root, 'workflows', f), 'utf8')});
const docs = docBlocks(path.join(root, 'docs/workflows.md'));
if (docs.length < 10)
  fail(`docs/workflows.md has only ${docs.length} workflow examples: the extraction is broken`);
good.push(...docs);

for (const g of good) {
  checked++;
  let doc;
  try { doc = JSON.parse(g.body); } catch (e) { fail(`${g.where}: not JSON: ${e.message}`); continue; }
  if (!validate(doc))
    fail(`${g.where}: refused: ${ajv.errorsText(validate.errors)}`);
}

const bad = JSON.parse(fs.readFileSync(path.join(root, 'tests/schema/bad.json'), 'utf8'));
for (const b of bad) {
  checked++;
  if (validate(b.definition))
    fail(`bad.json "${b.why}": accepted by the schema`);
}
console.log(`${checked} definitions checked (${good.length} valid, ${bad.length} invalid), ${failures} failures`);
process.exit(failures ? 1 : 0);
