#!/usr/bin/env node
// An ATP/1 client from the spec alone: node client.mjs URL [--prompt TEXT | --prompt-file F]
// [--tasks N] [--ttl S] [--qos gold|silver|bronze] [--token JWT] [--ca PEM] [--json]
// Runs N tasks one after another on one session and prints each answer (one JSON object a
// line with --json). Exit 0: every task answered; 1: a task failed; 2: bad usage.
//
// What it does for the spec: CAPABILITIES first (ATP-SESS-001) with the SYN in the same
// message (ATP-SESS-014); ids increasing (ATP-STREAM-002); the SYN cut into fragments that
// fit the router's max_frame_size and a quarter of its initial_window and sent only within
// credit (ATP-SEQ-008, ATP-FLOW-001, ATP-FLOW-013), with the default window for a stream
// opened before the router's CAPABILITIES (ATP-SESS-015); heartbeats answered
// (ATP-TIME-002); credit returned at ⌈W/2⌉ (ATP-FLOW-012); a SYN from the router refused
// with EPROTO (ATP-STREAM-006); no new stream after EDRAINING (ATP-SESS-006); a refused
// stream retried once, not before retry_after_ms (ATP-ERR-008), and only for codes that
// carry one (ATP-ERR-009); the ttl enforced with ERROR ETIMEOUT (ATP-TIME-007).
import { Session } from './session.mjs';
import { frame, T, F, QOS, decodePayload } from './frame.mjs';
import { encode } from './cbor.mjs';
import { catchAll, fail, parseArgs, readInput, usageError } from './cli.mjs';

const PROG = 'client.mjs';
catchAll(PROG);
const usage = 'usage: node client.mjs ws://HOST:PORT/ws [--prompt TEXT | --prompt-file F] [--tasks N] [--ttl S] [--qos gold|silver|bronze] [--token JWT] [--ca PEM] [--json]\n'
  + 'Runs N tasks one after another on one session, prints each answer. Exit 0: every task answered; 1: a task failed; 2: bad usage.';
const { url, opts } = parseArgs(PROG, process.argv.slice(2), {
  valued: ['--prompt', '--prompt-file', '--tasks', '--ttl', '--qos', '--token', '--ca'], flags: ['--json'], usage,
});
const tasks = Number(opts['--tasks'] ?? 1);
if (!Number.isInteger(tasks) || tasks < 1) usageError(PROG, `--tasks ${opts['--tasks']}: a whole number, 1 or more`);
const ttl = Number(opts['--ttl'] ?? 0);
if (!Number.isInteger(ttl) || ttl < 0 || ttl > 65535) usageError(PROG, `--ttl ${opts['--ttl']}: whole seconds, 0 to 65535`);
const qos = Object.hasOwn(QOS, opts['--qos'] ?? 'silver') ? QOS[opts['--qos'] ?? 'silver'] : undefined;
if (qos === undefined) usageError(PROG, `--qos ${opts['--qos']}: one of ${Object.keys(QOS).join(', ')}`);
if (opts['--prompt'] !== undefined && opts['--prompt-file'] !== undefined) usageError(PROG, '--prompt and --prompt-file: one or the other');
const prompt = opts['--prompt-file'] !== undefined ? readInput(PROG, '--prompt-file', opts['--prompt-file'], 'utf8') : (opts['--prompt'] ?? 'hello');
if (opts['--ca']) readInput(PROG, '--ca', opts['--ca']); // "": none (conformance fills {ca} so)
const json = Boolean(opts['--json']);
const RETRYABLE = new Set(['ESEQ_RETRY', 'EWINDOW', 'EAGENTDOWN', 'EPREEMPT', 'EDRAINING', 'EWINDOW_AGENT']);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let s;
try {
  s = await Session.open(url, { token: opts['--token'], ca: opts['--ca'] || undefined, timeoutMs: 5000 });
} catch (e) {
  fail(PROG, `cannot connect to ${url}: ${e.message}`);
}
if (s.refused) fail(PROG, `handshake refused: HTTP ${s.refused}`);

// the router's limits: the defaults of §12 until its CAPABILITIES arrive
const peer = { max_frame_size: 1048576, initial_window: 262144, max_message_size: 4194304 };
let peerCaps = false, draining = false, sessionEnd = null;
const credit = new Map(); // stream -> send credit left
const known = new Set(); // streams we opened
const refused = new Map(); // stream -> why we ended it with a stream error
let nextId = 1;

/** Read one frame and do what the session needs; returns it (or null: closed / timeout). */
async function pump(timeoutMs) {
  const f = await s.recv(timeoutMs);
  if (s.badMessage && !sessionEnd) {
    // ATP-WS-001: a message that ends inside a frame is a connection error EPROTO, whatever
    // the frame's header announces (no ETOOBIG for a frame the message cuts)
    sessionEnd = `EPROTO: ${s.badMessage}`;
    s.send(frame({ type: T.ERROR, stream: 0, ext: { error: { code: 'EPROTO', message: s.badMessage } } }));
    s.ws.close(1002);
    return null;
  }
  if (!f) { if (s.ws.closed && !sessionEnd) sessionEnd = 'the router closed the session'; return null; }
  if (f.text) return f;
  if (f.stream === 0) {
    if (f.type === T.CAPABILITIES && !peerCaps) {
      peerCaps = true;
      for (const k of Object.keys(peer)) {
        const v = f.ext.caps?.[k];
        if (Number.isInteger(v) && v > 0 && (k !== 'max_frame_size' || v >= 1024) && (k !== 'initial_window' || v < 2 ** 31)) peer[k] = v;
      }
    } else if (f.type === T.ERROR) {
      if (f.ext.error?.code === 'EDRAINING') draining = true;
      else sessionEnd = `${f.ext.error?.code}: ${f.ext.error?.message}`;
    }
    return f;
  }
  if (f.type === T.WINDOW_UPDATE && 'credit' in f.ext && !(Number.isInteger(f.ext.credit) && f.ext.credit >= 1 && f.ext.credit <= 0x7fffffff)) {
    // ATP-FLOW-004: a credit outside 1 .. 2^31-1 is malformed: a stream error EPROTO
    const why = `credit ${f.ext.credit} outside 1..2^31-1`;
    s.send(frame({ type: T.ERROR, flags: F.RST, stream: f.stream, ext: { error: { code: 'EPROTO', message: why } } }));
    refused.set(f.stream, why);
    return f;
  }
  if ((f.type === T.WINDOW_UPDATE || f.type === T.BUDGET_UPDATE) && !known.has(f.stream)) {
    // ATP-STREAM-013, ATP-STREAM-016: credit or budget for a stream we never opened is a
    // stream error EPROTO (an ERROR there is only discarded: ATP-ERR-011)
    s.send(frame({ type: T.ERROR, flags: F.RST, stream: f.stream, ext: { error: { code: 'EPROTO', message: `stream ${f.stream} was never opened` } } }));
    return null;
  }
  if (f.type === T.WINDOW_UPDATE && credit.has(f.stream)) credit.set(f.stream, credit.get(f.stream) + (f.ext.credit ?? 0));
  if (f.type === T.DATA && (f.flags & F.SYN)) {
    s.send(frame({ type: T.ERROR, flags: F.RST, stream: f.stream, ext: { error: { code: 'EPROTO', message: 'a router does not open streams' } } }));
    return null;
  }
  return f;
}

/** Send the task as a SYN within credit, fragments cut to fit; returns the stream id. */
async function sendTask(deadline) {
  const sid = nextId; nextId += 2;
  known.add(sid);
  const body = Buffer.from(encode({ type: 'agent.task', content: { prompt } }));
  if (body.length > peer.max_message_size) throw new Error(`task of ${body.length} bytes over the router's max_message_size`);
  const W = peer.initial_window; // fixed for this stream at its SYN (ATP-SESS-009, ATP-SESS-015)
  credit.set(sid, W);
  const maxFrag = Math.max(1, Math.min(peer.max_frame_size, Math.floor(W / 4)) - 0);
  let off = 0, frag = 0;
  while (off < body.length || frag === 0) {
    let c = credit.get(sid);
    // wait while credit is at most W/2 and the next fragment does not fit (ATP-FLOW-013)
    while (c < 25 || (c <= Math.floor(W / 2) && c < 24 + Math.min(maxFrag, body.length - off))) {
      if (Date.now() > deadline) return sid;
      await pump(200);
      if (sessionEnd) return sid;
      c = credit.get(sid);
    }
    const n = Math.min(maxFrag, body.length - off, c - 24);
    const last = off + n >= body.length;
    s.send(frame({ flags: (frag === 0 ? F.SYN : 0) | (last ? 0 : F.CONT), qos: frag === 0 ? qos : 0, ttl: frag === 0 ? ttl : 0,
      stream: sid, msgSeq: 1, fragSeq: frag, payload: body.subarray(off, off + n) }));
    credit.set(sid, c - 24 - n);
    off += n; frag++;
    if (last) break;
  }
  return sid;
}

/** One task: its answer, or {error}. */
async function runTask() {
  const deadline = ttl ? Date.now() + ttl * 1000 : Infinity;
  const sid = await sendTask(deadline);
  const parts = [];
  let cont = [];
  for (;;) {
    if (sessionEnd) return { error: 'session', message: sessionEnd };
    if (refused.has(sid)) return { error: 'EPROTO', message: refused.get(sid) };
    if (Date.now() > deadline) {
      s.send(frame({ type: T.ERROR, flags: F.RST, stream: sid, ext: { error: { code: 'ETIMEOUT', message: 'the ttl passed' } } }));
      return { error: 'ETIMEOUT', message: `no answer within the ttl (${ttl} s)` };
    }
    const f = await pump(Math.min(500, deadline - Date.now()));
    if (!f || f.text || f.stream !== sid) continue;
    if (f.type === T.ERROR) return { error: f.ext.error?.code ?? 'ERROR', message: f.ext.error?.message, retry: f.ext.error?.retry_after_ms };
    if (f.type !== T.DATA) continue;
    if (f.flags & F.RST) return { error: 'RST', message: 'stream reset by the router' };
    cont.push(Buffer.from(f.payload));
    if (f.flags & F.CONT) continue;
    const msg = decodePayload({ payload: Buffer.concat(cont) });
    cont = [];
    parts.push(msg);
    if (f.flags & F.FIN) return { answer: msg?.content?.answer ?? msg?.content, telemetry: f.ext.telemetry, partials: parts.length - 1 };
  }
}

s.send(s.caps({ features: ['fragmentation', 'heartbeat', 'budget'] }));
let failed = false;
/** Handle what has already arrived (an EDRAINING, say) before opening a stream. */
async function settle() {
  await new Promise((r) => setImmediate(r));
  while (s.pending.length || s.ws.queue.length) await pump(0);
}

for (let i = 0; i < tasks; i++) {
  await settle();
  if (draining) { console.error(`${PROG}: error: the router is draining: no new streams`); failed = true; break; }
  let r = await runTask();
  if (r.error && RETRYABLE.has(r.error) && Number.isInteger(r.retry) && !draining && !sessionEnd) {
    await sleep(r.retry); // ATP-ERR-008
    await settle();
    if (!draining) r = await runTask();
  }
  if (r.error) { failed = true; console.error(`${PROG}: error: task ${i + 1}: ${r.error}: ${String(r.message).split(/\s+/).join(' ')}`); if (sessionEnd) break; continue; }
  console.log(json ? JSON.stringify({ task: i + 1, answer: r.answer, telemetry: r.telemetry }) : String(r.answer));
}
s.ws.close(1000);
await s.closed(1000);
s.end();
process.exit(failed ? 1 : 0);
