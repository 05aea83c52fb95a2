// tests/contract/client.ts: the basic flow through a client generated from the OpenAPI document
// (openapi-typescript types, openapi-fetch calls), compiled with tsc --strict by contract.mjs:
// register a workflow, enqueue a run, poll it until it waits, send the event it waits for, poll
// until it succeeded, and use what came back with its documented types.
import createClient from "openapi-fetch";
import type { paths, components } from "./schema.js";

declare const process: { argv: string[]; exit(code: number): never };

type Run = components["schemas"]["Run"];

const [base, key] = [process.argv[2] ?? "", process.argv[3] ?? ""];
const client = createClient<paths>({ baseUrl: base, headers: { Authorization: `Bearer ${key}` } });

function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(what);
}

async function poll(id: number, until: (run: Run) => boolean): Promise<Run> {
  for (let i = 0; i < 400; i++) {
    const { data, error } = await client.GET("/v1/runs/{id}", { params: { path: { id } } });
    check(data !== undefined, `GET /v1/runs/${id}: ${JSON.stringify(error)}`);
    if (data && until(data)) return data;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`run ${id} did not get there`);
}

async function main(): Promise<void> {
  const put = await client.PUT("/v1/workflows/{name}", {
    params: { path: { name: "ts_flow" } },
    body: {
      name: "ts_flow",
      steps: [
        { key: "wait", kind: "wait_event", input: { event: "lead.replied", key: "{{input.lead}}" } },
        { key: "greet", kind: "transform", needs: ["wait"], input: { text: "hi {{input.lead}}" } },
      ],
    },
  });
  check(put.data !== undefined, `register: ${JSON.stringify(put.error)}`);
  const version: number | undefined = put.data?.version;
  check(typeof version === "number", "register: no version");

  const enq = await client.POST("/v1/runs", {
    body: { workflow: "ts_flow", input: { lead: "lead-42" } },
    params: { header: { "Idempotency-Key": "ts-flow-1" } },
  });
  check(enq.data !== undefined, `enqueue: ${JSON.stringify(enq.error)}`);
  const id = enq.data?.id ?? 0;

  const waiting = await poll(id, (r) => r.steps.some((s) => s.key === "wait" && s.state === "waiting"));
  // the engine's clock may run ahead of this one (the contract test advanced it), not by a day
  const age = Date.now() - Date.parse(waiting.created_at);
  check(Number.isFinite(age) && Math.abs(age) < 86400000, `created_at ${waiting.created_at}`);

  const ev = await client.POST("/v1/events", {
    body: { name: "lead.replied", key: "lead-42", data: { text: "yes" } },
  });
  check(ev.data !== undefined && ev.data.resumed === 1, `event: ${JSON.stringify(ev.data ?? ev.error)}`);

  const done = await poll(id, (r) => r.state !== "running" && r.state !== "queued");
  check(done.state === "succeeded", `run ended ${done.state}`);
  check(done.progress.percent === 100, `progress ${JSON.stringify(done.progress)}`);
  const finished = done.finished_at === null ? NaN : Date.parse(done.finished_at);
  check(finished >= Date.parse(done.created_at), "finished before it was created");

  const missing = await client.GET("/v1/runs/{id}", { params: { path: { id: 99999999 } } });
  check(missing.response.status === 404 && missing.error?.error.code === "not_found", "404");
  console.log(`generated client: run ${id} ${done.state}, ${done.progress.done}/${done.progress.total} steps`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
