// tests/webhooks/receiver.js: a webhook receiver for flowd's tests that verifies every delivery
// with the Standard Webhooks reference library (npm standardwebhooks). It prints its port on the
// first line of stdout, then answers:
//   POST /_config {secrets?: [...], status?: N, retry_after?: "...", hold?: bool}
//        how to verify and answer the deliveries that follow (default: status 204)
//   GET  /_log   every delivery so far: {id, timestamp, type, run, verified, secret, signatures,
//                at, answered}; secret is the index of the configured secret that verified it
//   POST /_release  answers the deliveries held so far (hold: true keeps them unanswered)
// Anything else is a delivery. A delivery that fails verification is answered 400.
const http = require("http");
const { Webhook } = require("standardwebhooks");

let config = { secrets: [], status: 204, retry_after: null, hold: false };
const log = [];
let held = [];

function answer(res, status, extra) {
  const headers = extra || {};
  res.writeHead(status, headers);
  res.end(status === 204 ? undefined : JSON.stringify({ status }));
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    if (req.url === "/_config") {
      config = Object.assign({ status: 204, retry_after: null, hold: false }, config,
                             JSON.parse(body));
      return answer(res, 200);
    }
    if (req.url === "/_log") {
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify(log));
    }
    if (req.url === "/_release") {
      const n = held.length;
      held.forEach((r) => answer(r, config.status));
      held = [];
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify({ released: n }));
    }
    let verified = false, secret = -1, payload = null;
    config.secrets.forEach((s, i) => {
      if (verified) return;
      try {
        payload = new Webhook(s).verify(body, req.headers);
        verified = true;
        secret = i;
      } catch (e) { /* the next secret may verify it */ }
    });
    const entry = {
      id: req.headers["webhook-id"], timestamp: req.headers["webhook-timestamp"],
      signatures: (req.headers["webhook-signature"] || "").split(" ").length,
      type: payload ? payload.type : null,
      run: payload && payload.data ? (payload.data.run || payload.data.id || null) : null,
      state: payload && payload.data ? payload.data.state || null : null,
      verified, secret, at: Date.now(), path: req.url,
      answered: verified ? config.status : 400,
    };
    log.push(entry);
    if (!verified) return answer(res, 400);
    if (config.hold) { held.push(res); return; }
    const extra = config.retry_after ? { "retry-after": config.retry_after } : undefined;
    answer(res, config.status, extra);
  });
});
server.keepAliveTimeout = 60000;
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(server.address().port + "\n");
});
process.stdin.on("end", () => process.exit(0)); // the test closes our stdin when it is done
process.stdin.resume();
