// tests/webhooks/sign.js SECRET MSG_ID AGE_S: signs stdin (the payload, as bytes) with the Standard
// Webhooks reference library (npm standardwebhooks), as a sender that uses it would, AGE_S seconds
// in the past, and prints the three headers, one "name: value" a line.
const { Webhook } = require("standardwebhooks");

const [secret, id, age] = process.argv.slice(2);
const chunks = [];
process.stdin.on("data", (c) => chunks.push(c));
process.stdin.on("end", () => {
  const payload = Buffer.concat(chunks).toString("utf8");
  const at = new Date(Date.now() - Number(age || 0) * 1000);
  const signature = new Webhook(secret).sign(id, at, payload);
  process.stdout.write(`webhook-id: ${id}\n`);
  process.stdout.write(`webhook-timestamp: ${Math.floor(at.getTime() / 1000)}\n`);
  process.stdout.write(`webhook-signature: ${signature}\n`);
});
