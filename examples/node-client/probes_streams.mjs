// Probes of streams, sequencing, reassembly, credit, time, errors and the JSON mapping.
import { Session, syn, SLACK } from './session.mjs';
import { frame, T, F, decodePayload } from './frame.mjs';
import { streams, fresh, streamError, connError, checkComplete, code, desc, isErr } from './probes.mjs';

const P = [];
const probe = (name, ids, fn) => P.push({ name, ids, fn });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const data = (stream, msgSeq, o = {}) => frame({ stream, msgSeq, ...o });
const wu = (stream, ext) => frame({ type: T.WINDOW_UPDATE, stream, ext });
// A stream the router cannot finish: our initial_window is small and we return no credit.
const held = async (ctx, n = 1) => {
  const s = await fresh(ctx, { initial_window: 1024 }, { initialWindow: 1024, autoCredit: false });
  for (let i = 0; i < n; i++) s.send(syn(1 + 2 * i, { prompt: 'y'.repeat(6000) }));
  // the router sends what our credit allows, then waits: read all of it
  await s.until((f) => f.stream === 2 * n - 1 && f.type === T.DATA, 2000);
  await sleep(50);
  await s.barrier();
  return s;
};

// ---- stream lifecycle ------------------------------------------------------------------
probe('stream_basic', ['ATP-SEQ-003', 'ATP-FLAG-008', 'ATP-BUDGET-006', 'ATP-STREAM-011'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { qos: 1, ttl: 8, window: { max_parallel: 4, max_tokens: 50000, max_usd_micros: 1000000 } }));
  const r = await s.stream(1);
  const b = await s.barrier();
  s.end();
  const bad = checkComplete(r);
  if (bad) return { ok: false, detail: bad };
  const tel = r.end.ext.telemetry ?? {};
  const miss = ['tokens', 'usd_micros', 'latency_ms'].filter((k) => !Number.isInteger(tel[k]));
  const after = b.before.filter((f) => f.stream === 1);
  if (after.length) return { ok: false, detail: `frames after FIN: ${desc(after[0])}` };
  return { ok: miss.length === 0, detail: miss.length ? `telemetry lacks ${miss}` : `FINAL ${JSON.stringify(decodePayload(r.end))}` };
});
probe('syn_msg_seq_not_1', ['ATP-SEQ-002', 'ATP-SEQ-003'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { msgSeq: 1000 }));
  const r = await s.stream(1); s.end();
  const bad = checkComplete(r, 1000);
  return { ok: !bad, detail: bad ?? 'router numbered from SYN.msg_seq + 1 = 1001' };
});
probe('syn_with_fin', ['ATP-FLAG-007'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { flags: F.FIN }));
  const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'half-closed SYN served' };
});
probe('client_fin_and_data_after_syn', ['ATP-STREAM-015', 'ATP-STREAM-014'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1), data(1, 2, { payload: { type: 'agent.task', content: 'more' } }), data(1, 3, { flags: F.FIN }));
  const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'extra client DATA and an empty FIN accepted and ignored' };
});
probe('data_after_client_fin', ['ATP-STREAM-005'], async (ctx) => {
  const s = await held(ctx);
  s.send(data(1, 2, { flags: F.FIN }), data(1, 3, { payload: Uint8Array.of(1) }));
  return streamError(s, 1, 'EPROTO');
});
probe('syn_id_not_increasing', ['ATP-STREAM-002'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(5));
  await s.stream(5);
  s.send(syn(3));
  return streamError(s, 3, 'EPROTO');
});
probe('syn_reuses_closed_id', ['ATP-STREAM-002', 'ATP-FLAG-004'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(5));
  await s.stream(5);
  s.send(syn(5));
  // a closed stream: "RST or any frame ... MUST be discarded" vs "SYN on an id not greater ... EPROTO"
  const r = await s.until(isErr(5), 1000);
  s.end();
  return { ok: code(r.hit) === 'EPROTO', detail: `router: ${desc(r.hit)}` };
});
probe('data_on_never_opened', ['ATP-STREAM-003'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(data(9, 1, { payload: Uint8Array.of(1) }));
  return streamError(s, 9, 'EPROTO');
});
probe('syn_on_open_stream', ['ATP-STREAM-004'], async (ctx) => {
  const s = await held(ctx);
  s.send(syn(1, { msgSeq: 2 }));
  return streamError(s, 1, 'EPROTO');
});
probe('stream_id_max', ['ATP-STREAM-012'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(0x7fffffff));
  const r = await s.stream(0x7fffffff); s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'stream 2^31-1 served' };
});
probe('concurrent_streams', ['ATP-SEQ-001', 'ATP-ERR-005'], async (ctx) => {
  const s = await fresh(ctx);
  const ids = Array.from({ length: 20 }, (_, i) => 2 * i + 1);
  s.send(...ids.map((id) => syn(id, { prompt: `task ${id}` })));
  const done = new Map();
  const deadline = Date.now() + 4000 * SLACK;
  const per = new Map(ids.map((i) => [i, []]));
  while (done.size < ids.length && Date.now() < deadline) {
    const f = await s.recv(deadline - Date.now());
    if (!f) break;
    if (per.has(f.stream)) per.get(f.stream).push(f);
    if (f.type === T.ERROR || (f.type === T.DATA && f.flags & F.FIN)) done.set(f.stream, f);
  }
  s.end();
  for (const id of ids) {
    const bad = checkComplete({ frames: per.get(id), end: done.get(id) });
    if (bad) return { ok: false, detail: `stream ${id}: ${bad}` };
    const ans = decodePayload(done.get(id))?.content?.answer;
    if (ans !== undefined && !String(ans).includes(`task ${id}`)) return { ok: false, detail: `stream ${id} got answer ${ans}` };
  }
  return { ok: true, detail: `${ids.length} interleaved streams, each sequenced on its own` };
});
probe('max_streams', ['ATP-STREAM-008', 'ATP-ERR-004'], async (ctx) => {
  const s = await fresh(ctx, { initial_window: 1024 }, { initialWindow: 1024, autoCredit: false });
  const max = s.routerCaps.max_streams ?? 100;
  const ids = Array.from({ length: max + 1 }, (_, i) => 2 * i + 1);
  s.send(...ids.map((id) => syn(id, { prompt: 'z'.repeat(6000) })));
  const r = await s.until((f) => !f.text && f.type === T.ERROR, 3000);
  s.end();
  const e = r.hit?.ext.error;
  return { ok: r.hit?.stream === ids[max] && e?.code === 'EWINDOW' && Number.isInteger(e.retry_after_ms),
    detail: `stream ${max + 1} of ${max + 1}: ${desc(r.hit)}` };
});
probe('rst_mid_stream', ['ATP-FLAG-003', 'ATP-FLAG-004', 'ATP-STREAM-011'], async (ctx) => {
  const s = await held(ctx);
  s.send(data(1, 2, { flags: F.RST }));
  s.send(wu(1, { credit: 100000 }), data(1, 3, { flags: F.RST }));
  const b = await s.barrier(); await sleep(200); const b2 = await s.barrier();
  s.end();
  const after = [...b.before, ...b2.before].filter((f) => f.stream === 1);
  return { ok: b2.ok && after.length === 0, detail: after.length ? `after RST: ${desc(after[0])}` : 'RST ended the stream; later frames discarded silently' };
});
probe('client_error_frame', ['ATP-FRAME-022', 'ATP-ERR-011'], async (ctx) => {
  const s = await held(ctx);
  s.send(frame({ type: T.ERROR, flags: F.RST, stream: 1, ext: { error: { code: 'EX_CLIENT', message: 'bye' } } }));
  s.send(wu(1, { credit: 100000 }));
  await sleep(150);
  const b = await s.barrier(); s.end();
  const after = b.before.filter((f) => f.stream === 1);
  return { ok: b.ok && after.length === 0, detail: after.length ? `after ERROR: ${desc(after[0])}` : 'ERROR ended the stream without an answer' };
});
probe('client_error_without_message', ['ATP-FRAME-015'], async (ctx) => {
  const s = await held(ctx);
  s.send(frame({ type: T.ERROR, flags: F.RST, stream: 1, ext: { error: { code: 'EX_CLIENT' } } }));
  return streamError(s, 1, 'EPROTO');
});
probe('client_error_on_stream0', ['ATP-ERR-007'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ type: T.ERROR, ext: { error: { code: 'EX_WHATEVER', message: 'client leaves' } } }));
  const closed = await s.closed(2000);
  const errs = s.log.filter(isErr(0));
  return { ok: closed && errs.length === 0, detail: `closed ${closed} (code ${s.closeCode}); ERRORs back: ${errs.length}` };
});
probe('budget_update_from_client', ['ATP-FRAME-014'], async (ctx) => {
  const s = await held(ctx);
  s.send(frame({ type: T.BUDGET_UPDATE, stream: 1, ext: { usage: { tokens: 1, usd_micros: 1, parallel: 1 } } }));
  return streamError(s, 1, 'EPROTO');
});

// ---- sequencing and reassembly ---------------------------------------------------------
probe('wrong_msg_seq', ['ATP-SEQ-004', 'ATP-SEQ-001'], async (ctx) => {
  const s = await held(ctx);
  s.send(data(1, 5, { payload: Uint8Array.of(1) }));
  const r = await streamError(s, 1, 'ESEQ_RETRY');
  if (r.ok && r.error.retry_after_ms !== 0) return { ok: false, detail: `ESEQ_RETRY retry_after_ms ${r.error.retry_after_ms}, §11 says 0` };
  return r;
});
probe('wrong_frag_seq', ['ATP-SEQ-004'], async (ctx) => {
  const s = await fresh(ctx);
  const p = Buffer.from('{"prompt":"hello"}');
  s.send(frame({ flags: F.SYN | F.CONT, stream: 1, msgSeq: 1, payload: p.subarray(0, 5) }),
    frame({ flags: 0, stream: 1, msgSeq: 1, fragSeq: 2, payload: p.subarray(5) }));
  return streamError(s, 1, 'ESEQ_RETRY');
});
probe('fragmented_syn', ['ATP-SEQ-010', 'ATP-SEQ-012'], async (ctx) => {
  const s = await fresh(ctx);
  const whole = Buffer.from(syn(1, { prompt: 'fragmented hello' }).subarray(24)); // ext_len 0: payload only
  const parts = [whole.subarray(0, 7), whole.subarray(7, 20), whole.subarray(20)];
  s.send(...parts.map((p, i) => frame({ flags: (i === 0 ? F.SYN : 0) | (i < 2 ? F.CONT : 0), qos: i === 0 ? 2 : 0,
    stream: 1, msgSeq: 1, fragSeq: i, payload: p })));
  const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  const ans = bad ? '' : JSON.stringify(decodePayload(r.end)?.content);
  return { ok: !bad && ans.includes('fragmented hello'), detail: bad ?? `reassembled: ${ans}` };
});
probe('ext_on_later_fragment', ['ATP-SEQ-006'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.SYN | F.CONT, stream: 1, msgSeq: 1, payload: Uint8Array.of(0xa1) }),
    frame({ stream: 1, msgSeq: 1, fragSeq: 1, ext: { 'x-a': 1 }, payload: Uint8Array.of(0x61, 0x61, 0x01) }));
  return streamError(s, 1, 'EPROTO');
});
probe('syn_on_later_fragment', ['ATP-SEQ-006'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.SYN | F.CONT, stream: 1, msgSeq: 1, payload: Uint8Array.of(0xa1) }),
    frame({ flags: F.SYN, stream: 1, msgSeq: 1, fragSeq: 1, payload: Uint8Array.of(0x61, 0x61, 0x01) }));
  return streamError(s, 1, 'EPROTO');
});
probe('fin_with_cont', ['ATP-SEQ-006'], async (ctx) => {
  const s = await held(ctx);
  s.send(data(1, 2, { flags: F.FIN | F.CONT, payload: Uint8Array.of(1) }));
  return streamError(s, 1, 'EPROTO');
});
probe('message_over_max_message_size', ['ATP-SEQ-007', 'ATP-SEQ-009'], async (ctx) => {
  const s = await fresh(ctx);
  const max = s.routerCaps.max_message_size ?? 4194304;
  const chunk = 60000;
  let credit = s.routerCaps.initial_window ?? 262144, sent = 0, frag = 0;
  const deadline = Date.now() + 6000 * SLACK;
  while (sent <= max && Date.now() < deadline) {
    while (credit >= chunk + 24 && sent <= max) {
      s.send(frame({ flags: (frag === 0 ? F.SYN : 0) | F.CONT, stream: 1, msgSeq: 1, fragSeq: frag, payload: new Uint8Array(chunk) }));
      credit -= chunk + 24; sent += chunk; frag++;
    }
    const f = await s.recv(2000);
    if (!f) return { ok: false, detail: `stalled after ${sent} bytes: no credit returned (ATP-SEQ-009)` };
    if (f.type === T.WINDOW_UPDATE && f.stream === 1) credit += f.ext.credit;
    if (f.type === T.ERROR) { s.pending.unshift(f); break; }
  }
  return streamError(s, 1, 'ETOOBIG', 3000);
});

// ---- credit ------------------------------------------------------------------------------
probe('send_beyond_credit', ['ATP-FLOW-002'], async (ctx) => {
  const s = await fresh(ctx);
  const w = s.routerCaps.initial_window ?? 262144;
  s.send(frame({ flags: F.SYN | F.CONT, stream: 1, msgSeq: 1, payload: new Uint8Array(w - 24 + 1) }));
  return streamError(s, 1, 'EWINDOW');
});
probe('credit_exactly_window', ['ATP-FLOW-002', 'ATP-FLOW-003'], async (ctx) => {
  const s = await fresh(ctx);
  const w = s.routerCaps.initial_window ?? 262144;
  const body = Buffer.from(syn(1, { prompt: 'p' }).subarray(24));
  // a SYN whose first fragment costs exactly the window, then the rest after credit returns
  s.send(frame({ flags: F.SYN | F.CONT, stream: 1, msgSeq: 1, payload: new Uint8Array(w - 24) }));
  const r = await s.until((f) => f.stream === 1 && (f.type === T.WINDOW_UPDATE || f.type === T.ERROR), 2000);
  s.end();
  return { ok: r.hit?.type === T.WINDOW_UPDATE, detail: `a fragment costing exactly ${w}: ${desc(r.hit)}` + (body.length ? '' : '') };
});
probe('window_update_zero', ['ATP-FLOW-004'], async (ctx) => {
  const s = await held(ctx);
  s.send(wu(1, { credit: 0 }));
  return streamError(s, 1, 'EPROTO');
});
probe('window_update_past_2_31', ['ATP-FLOW-004'], async (ctx) => {
  const s = await held(ctx);
  // two in one message: whatever credit the router had left, the second passes 2^31-1
  s.send(wu(1, { credit: 0x7fffffff }), wu(1, { credit: 0x7fffffff }));
  return streamError(s, 1, 'EWINDOW');
});
probe('window_update_credit_2_31', ['ATP-FRAME-023', 'ATP-FLOW-004'], async (ctx) => {
  const s = await held(ctx);
  // ATP-FLOW-004: a credit outside 1 .. 2^31-1 is malformed (EPROTO), whatever the window
  s.send(wu(1, { credit: 0x80000000 }));
  return streamError(s, 1, 'EPROTO');
});
probe('window_update_empty', ['ATP-FRAME-019'], async (ctx) => {
  const s = await held(ctx);
  s.send(wu(1, { 'x-a': 1 }));
  return streamError(s, 1, 'EPROTO');
});
probe('window_update_bad_window', ['ATP-FRAME-020'], async (ctx) => {
  const s = await held(ctx);
  s.send(wu(1, { window: { max_tokens: -5 } }));
  return streamError(s, 1, 'EPROTO');
});
probe('window_update_never_opened', ['ATP-STREAM-013'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(wu(41, { credit: 10 }));
  return streamError(s, 41, 'EPROTO');
});
probe('router_respects_small_window', ['ATP-FLOW-001', 'ATP-FLOW-013', 'ATP-SEQ-008', 'ATP-SESS-007'], async (ctx) => {
  const W = 1024;
  const s = await fresh(ctx, { initial_window: W }, { initialWindow: W, autoCredit: false });
  const text = 'abcdefghij'.repeat(500);
  s.send(syn(1, { prompt: text }));
  let credit = W, unret = 0, frags = [], msgs = 0, end = null;
  const deadline = Date.now() + 5000 * SLACK;
  while (!end && Date.now() < deadline) {
    const f = await s.recv(1500);
    if (!f) return { ok: false, detail: `stalled with credit ${credit} after ${msgs} messages` };
    if (f.stream !== 1) continue;
    if (f.type === T.ERROR) return { ok: false, detail: `ERROR ${desc(f)}` };
    if (f.type !== T.DATA) continue;
    if (f.cost > credit) return { ok: false, detail: `router overdrew: frame of ${f.cost} with credit ${credit}` };
    credit -= f.cost; unret += f.cost;
    frags.push(f);
    if (!(f.flags & F.CONT)) { msgs++; if (f.flags & F.FIN) end = f; }
    if (unret >= Math.ceil(W / 2)) { s.send(wu(1, { credit: unret })); credit += unret; unret = 0; }
  }
  s.end();
  if (!end) return { ok: false, detail: 'no FINAL' };
  const finalFrags = []; for (let i = frags.length - 1; i >= 0; i--) { finalFrags.unshift(frags[i]); if (i === 0 || !(frags[i - 1].flags & F.CONT)) break; }
  const whole = Buffer.concat(finalFrags.map((f) => f.payload));
  const ans = decodePayload({ payload: whole })?.content?.answer;
  return { ok: ans === text, detail: `${frags.length} frames, ${msgs} messages within a ${W}-byte window; answer ${ans === text ? 'intact' : 'WRONG'}` };
});
probe('error_not_held_by_credit', ['ATP-FLOW-009', 'ATP-TIME-001'], async (ctx) => {
  const s = await held(ctx);
  s.send(frame({ flags: F.SYN, qos: 2, ttl: 1, stream: 3, msgSeq: 1, payload: { type: 'agent.task', content: { prompt: 'q'.repeat(6000) } } }));
  const t = Date.now();
  const r = await streamError(s, 3, 'ETIMEOUT', 3500);
  return { ...r, detail: `${r.detail} after ${Date.now() - t} ms (ttl 1 s, no credit left)` };
});

// ---- time: heartbeats ------------------------------------------------------------------
probe('heartbeat_64', ['ATP-TIME-002', 'ATP-TIME-003'], async (ctx) => {
  const s = await fresh(ctx);
  const p = Buffer.alloc(64, 7);
  s.send(frame({ flags: F.HB, payload: p }));
  const r = await s.until((f) => f.stream === 0 && (f.flags & F.HB), 1500); s.end();
  return { ok: r.hit && (r.hit.flags & F.ACK) && Buffer.compare(Buffer.from(r.hit.payload), p) === 0, detail: desc(r.hit) };
});
probe('heartbeat_65', ['ATP-TIME-003'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.HB, payload: Buffer.alloc(65) }));
  return connError(s, 'ETOOBIG');
});
probe('heartbeat_reply_not_answered', ['ATP-TIME-006'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.HB | F.ACK, payload: Uint8Array.of(1, 2, 3) }));
  const b = await s.barrier(); s.end();
  const hb = b.before.filter((f) => f.stream === 0 && (f.flags & F.HB));
  return { ok: b.ok && hb.length === 0, detail: `answers to an HB|ACK: ${hb.length}` };
});

export const PROBES = P;
