// A minimal ATP adapter in Node.js: atp.adapter.v1.AdapterService (Estimate, Stream,
// Health) on @grpc/grpc-js, loading the repository's adapter.proto with
// @grpc/proto-loader. It answers with the prompt's words, one chunk each, and keeps the
// adapter contract the conformance suite checks (`atp conformance run --role adapter`):
//
//   * exactly one final chunk, the last; cumulative tokens / usd_micros never decrease;
//     confidence in [0, 1]                            (ATP-ADAPT-007, -018, -019, -020)
//   * bad tasks refused with INVALID_ARGUMENT before any chunk: empty prompt, negative
//     max_tokens, content_json / meta_json not a JSON object, undecodable bytes (-021)
//   * work stops when the call is cancelled or its deadline passes           (-008)
//   * Health: READY, and the `atp-calls-in-flight` probe header              (-022, -024)
//
// Usage: node adapter.js [--listen HOST:PORT]   (default 127.0.0.1:7070; port 0: any)
// Prints "adapter node-example listening on HOST:PORT" once it serves.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO =
  process.env.ATP_ADAPTER_PROTO ||
  path.join(__dirname, "..", "..", "atp_proto", "adapters", "proto", "atp", "adapter", "v1", "adapter.proto");
const DELAY_MS = 2; // between chunks: a stand-in for a model producing tokens
const MAX_WORDS = 64;

const definition = protoLoader.loadSync(PROTO, {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const service = grpc.loadPackageDefinition(definition).atp.adapter.v1.AdapterService.service;

// A request that does not decode must get INVALID_ARGUMENT, not grpc-js's INTERNAL: wrap
// the deserializers so the handler sees the failure.
for (const name of ["Estimate", "Stream"]) {
  const original = service[name].requestDeserialize;
  service[name].requestDeserialize = (buf) => {
    try {
      return original(buf);
    } catch (err) {
      return { __invalid: String(err && err.message ? err.message : err) };
    }
  };
}

let inFlight = 0; // calls whose work has not stopped (the probe, ATP-ADAPT-024)

function invalid(message) {
  return { code: grpc.status.INVALID_ARGUMENT, details: message };
}

function jsonObject(text, what) {
  if (!text) return null;
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return `${what} is not valid JSON`;
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return `${what} must be a JSON object`;
  }
  return null;
}

// The task, or an error object for a task the contract says to refuse.
function validate(request) {
  if (request.__invalid) return { error: invalid(`bad request: ${request.__invalid}`) };
  const task = request.task || {};
  if (!task.prompt) return { error: invalid("task.prompt must not be empty") };
  if (task._max_tokens === "max_tokens" && task.max_tokens < 0) {
    return { error: invalid("task.max_tokens must not be negative") };
  }
  for (const [field, what] of [["content_json", "content_json"], ["meta_json", "meta_json"]]) {
    const why = jsonObject(task[field], what);
    if (why) return { error: invalid(why) };
  }
  return { task };
}

function tokensIn(prompt) {
  return Math.floor(prompt.length / 4) + 1;
}

function estimate(call, callback) {
  const { task, error } = validate(call.request);
  if (error) return callback(error);
  const out = Math.min(MAX_WORDS, task.prompt.split(/\s+/).filter(Boolean).length || 1);
  const tin = tokensIn(task.prompt);
  callback(null, {
    in_tokens: tin,
    out_tokens: out,
    usd_micros: (tin + out) * 2,
    latency_p95_ms: out * DELAY_MS * 1.5 + 5,
    variance: out,
    confidence: 0.6,
  });
}

function stream(call) {
  const { task, error } = validate(call.request);
  if (error) {
    call.emit("error", error);
    return;
  }
  inFlight += 1;
  let stopped = false;
  let timer = null;
  let deadlineTimer = null;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    inFlight -= 1;
    clearTimeout(timer);
    clearTimeout(deadlineTimer);
  };
  call.on("cancelled", stop); // the router reset the call (or grpc-js saw the deadline)
  const deadline = call.getDeadline();
  const ms = deadline instanceof Date ? deadline.getTime() - Date.now() : Infinity;
  if (Number.isFinite(ms)) {
    deadlineTimer = setTimeout(() => {
      if (stopped) return;
      stop();
      call.emit("error", { code: grpc.status.DEADLINE_EXCEEDED, details: "deadline exceeded" });
    }, Math.max(0, ms));
  }
  const words = task.prompt.split(/\s+/).filter(Boolean).slice(0, MAX_WORDS);
  if (words.length === 0) words.push("?");
  let used = tokensIn(task.prompt);
  let i = 0;
  const next = () => {
    if (stopped) return;
    used += 1;
    const last = i === words.length - 1;
    call.write({
      content: words[i] + (last ? "" : " "),
      confidence: 0.6,
      tokens: used, // cumulative: input + output so far
      usd_micros: used * 2,
      final: last,
      finish_reason: last ? "stop" : "",
    });
    i += 1;
    if (last) {
      stop();
      call.end();
    } else {
      timer = setTimeout(next, DELAY_MS);
    }
  };
  timer = setTimeout(next, DELAY_MS);
}

function health(call, callback) {
  const md = new grpc.Metadata();
  md.set("atp-calls-in-flight", String(inFlight));
  call.sendMetadata(md);
  callback(null, { status: "STATUS_READY", p95_ms: 0, error_rate: 0, capacity: 0 });
}

function main() {
  const i = process.argv.indexOf("--listen");
  const listen = i >= 0 ? process.argv[i + 1] : "127.0.0.1:7070";
  const server = new grpc.Server();
  server.addService(service, { Estimate: estimate, Stream: stream, Health: health });
  server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      console.error(`cannot listen on ${listen}: ${err.message}`);
      process.exit(2);
    }
    const host = listen.slice(0, listen.lastIndexOf(":"));
    console.log(`adapter node-example listening on ${host}:${port}`);
  });
  const shutdown = () => server.tryShutdown(() => process.exit(0));
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
}

main();
