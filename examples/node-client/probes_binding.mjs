// Probes of the WebSocket binding (§13.1) and of limits at the message level (§12).
import crypto from 'node:crypto';
import { Session, syn, SLACK } from './session.mjs';
import { WsClient } from './ws.mjs';
import { frame, T, F } from './frame.mjs';
import { encode } from './cbor.mjs';
import { fresh, streamError, connError, checkComplete, code, desc, isErr } from './probes.mjs';

const P = [];
const probe = (name, ids, fn) => P.push({ name, ids, fn });

probe('subprotocol_selection', ['ATP-WS-003', 'ATP-WS-008'], async (ctx) => {
  const got = [];
  for (const protos of [[], ['atp.v1'], ['x-other'], ['x-other', 'atp.v1']]) {
    const ws = await WsClient.connect(ctx.url, { protocols: protos });
    got.push(ws.status === 101 ? ws.protocol : `HTTP ${ws.status}`);
    ws.destroy?.();
  }
  const want = [null, 'atp.v1', null, 'atp.v1'];
  return { ok: JSON.stringify(got) === JSON.stringify(want), detail: `offered none/atp.v1/x-other/both: selected ${JSON.stringify(got)}` };
});
probe('websocket_ping', ['§13.1 pings'], async (ctx) => {
  const s = await fresh(ctx);
  const tag = crypto.randomBytes(6);
  s.ws.ping(tag);
  const b = await s.barrier(); s.end();
  const pong = (s.ws.pongs ?? []).some((p) => Buffer.compare(p, tag) === 0);
  return { ok: pong && b.ok, detail: `pong ${pong}; session ${b.ok ? 'alive' : 'gone'}` };
});
probe('session_frames_follow_last_encoding', ['ATP-WS-004'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.sendText({ type: 'CAPABILITIES', caps: { versions: [1] } });
  const c = await s.until((f) => f.text || f.type === T.CAPABILITIES, 2000);
  s.send(frame({ flags: F.HB, payload: Uint8Array.of(5) }));
  const h = await s.until((f) => (f.text ? (f.json.flags ?? []).includes('HB') : (f.flags & F.HB)), 2000);
  s.sendText({ flags: ['HB'], payload_b64: 'Bg==' });
  const h2 = await s.until((f) => (f.text ? (f.json.flags ?? []).includes('HB') : (f.flags & F.HB)), 2000);
  s.end();
  const enc = [c.hit, h.hit, h2.hit].map((f) => (f == null ? 'none' : f.text ? 'text' : 'binary'));
  return { ok: enc.join() === 'text,binary,text', detail: `caps reply / HB after binary / HB after text: ${enc}` };
});
probe('router_returns_credit_by_half_default', ['ATP-SESS-016', 'ATP-FLOW-012', 'ATP-SEQ-009'], async (ctx) => {
  const s = await fresh(ctx);
  const n = 14, body = 10000; // 14 x 10,024 = 140,336 bytes >= 131,072
  s.send(...Array.from({ length: n }, (_, i) => frame({ flags: (i === 0 ? F.SYN : 0) | F.CONT, stream: 1, msgSeq: 1, fragSeq: i, payload: new Uint8Array(body) })));
  const r = await s.until((f) => f.stream === 1 && (f.type === T.WINDOW_UPDATE || f.type === T.ERROR), 2000);
  s.end();
  return { ok: r.hit?.type === T.WINDOW_UPDATE, detail: `after ${n * (body + 24)} bytes of one message: ${desc(r.hit)}` };
});
probe('caps_unknown_keys_and_features', ['ATP-EXT-003', 'ATP-EXT-004'], async (ctx) => {
  const s = await fresh(ctx, { features: ['json', 'x-teleport'], 'x-acme-limit': 5, max_streams: 'many' });
  s.send(syn(1)); const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'unknown caps keys, features and a non-integer limit ignored' };
});
probe('ext_over_max_ext_size', ['§12 max_ext_size', 'ATP-LIMIT-001'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { ext: { meta: { 'x-pad': 'p'.repeat(70000) } } }));
  return streamError(s, 1, 'ETOOBIG');
});
probe('stream_frame_in_oversized_message', ['ATP-WS-012', 'ATP-LIMIT-001'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.SYN, stream: 1, msgSeq: 1, payload: new Uint8Array(1200000) }));
  return streamError(s, 1, 'ETOOBIG', 3000);
});
probe('json_error_carries_stream_num', ['ATP-JSON-016'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.sendText({ stream_id: 'w', msg_seq: 1, flags: ['SYN'], window: { max_tokens: 1 }, payload: { type: 'agent.task', content: { prompt: 'x' } } });
  const r = await s.until((f) => f.text && f.json.stream_id === 'w', 2000); s.end();
  const j = r.hit?.json;
  return { ok: j?.type === 'ERROR' && Number.isInteger(j.stream_num), detail: JSON.stringify(j) };
});
probe('json_bad_version', ['ATP-FRAME-003'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.sendText({ v: 2, flags: ['HB'] });
  const r = await s.until((f) => f.text && f.json.type === 'ERROR', 2000);
  const closed = await s.closed(2000);
  return { ok: r.hit?.json.error?.code === 'EPROTO' && closed && s.closeCode === 1002, detail: `${JSON.stringify(r.hit?.json)} close ${s.closeCode}` };
});
probe('json_heartbeat_65', ['ATP-TIME-003'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.sendText({ flags: ['HB'], payload_b64: Buffer.alloc(65).toString('base64') });
  const r = await s.until((f) => f.text && f.json.type === 'ERROR', 2000);
  const closed = await s.closed(2000);
  return { ok: r.hit?.json.error?.code === 'ETOOBIG' && closed && s.closeCode === 1009, detail: `${JSON.stringify(r.hit?.json)} close ${s.closeCode}` };
});
probe('ttl_after_completion_silent', ['ATP-TIME-001', 'ATP-STREAM-011'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { ttl: 1 }));
  const r = await s.stream(1);
  await new Promise((res) => setTimeout(res, 1200));
  const b = await s.barrier(); s.end();
  const late = b.before.filter((f) => f.stream === 1);
  const bad = checkComplete(r);
  return { ok: !bad && late.length === 0, detail: bad ?? (late.length ? `after FIN: ${desc(late[0])}` : 'no ETIMEOUT after the FINAL') };
});

export const PROBES = P;

P.push({ name: 'json_no_caps_unlimited_credit', ids: ['ATP-FLOW-007'], fn: async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  const prompt = 'L'.repeat(400000);
  s.sendText({ stream_id: 'big', msg_seq: 1, flags: ['SYN'], payload: { type: 'agent.task', content: { prompt } } });
  let bytes = 0, end = null;
  const deadline = Date.now() + 5000 * SLACK;
  while (!end && Date.now() < deadline) {
    const f = await s.recv(2000);
    if (!f) break;
    if (f.text && f.json.stream_id === 'big') { bytes += f.cost; if (f.json.type === 'ERROR' || (f.json.flags ?? []).includes('FIN')) end = f; }
  }
  s.end();
  return { ok: end != null && !end.json.error, detail: end ? `${bytes} bytes of text frames without any WINDOW_UPDATE from us: ${end.json.error ? JSON.stringify(end.json.error) : 'FINAL'}` : `stalled after ${bytes} bytes` };
} });
P.push({ name: 'caps_window_applies_to_later_streams', ids: ['ATP-SESS-009', 'ATP-SESS-015'], fn: async (ctx) => {
  const s = await Session.open(ctx.url, { ...ctx.auth, autoCredit: false });
  s.send(syn(1, { prompt: 'e'.repeat(6000) }), s.caps({ initial_window: 1024 }), syn(3, { prompt: 'g'.repeat(6000) }));
  const got = { 1: 0, 3: 0 };
  let fin1 = false;
  // until stream 1 is done and stream 3 has used its window, then a little longer
  let deadline = Date.now() + 5000 * SLACK;
  while (Date.now() < deadline) {
    const f = await s.recv(Math.max(1, deadline - Date.now()));
    if (!f) continue;
    if (f.stream in got && f.type === T.DATA) { got[f.stream] += f.cost; if (f.stream === 1 && (f.flags & F.FIN)) fin1 = true; }
    if (fin1 && got[3] > 512 && deadline - Date.now() > 300) deadline = Date.now() + 300;
  }
  s.end();
  return { ok: fin1 && got[3] > 0 && got[3] <= 1024, detail: `stream 1 (opened before: default window) finished ${fin1} with ${got[1]} bytes; stream 3 got ${got[3]} bytes of a 1024 window` };
} });
P.push({ name: 'closed_streams_free_max_streams', ids: ['ATP-STREAM-007'], fn: async (ctx) => {
  const s = await fresh(ctx);
  const max = s.routerCaps.max_streams ?? 100;
  let id = 1, refused = 0, done = 0;
  for (let round = 0; round < 3; round++) {
    const ids = Array.from({ length: Math.min(max, 40) }, () => { const i = id; id += 2; return i; });
    s.send(...ids.map((i) => syn(i)));
    const seen = new Set();
    const r = await s.until((f) => {
      if (f.type === T.ERROR && f.stream) { refused++; seen.add(f.stream); }
      else if (f.type === T.DATA && (f.flags & F.FIN)) { done++; seen.add(f.stream); }
      return seen.size === ids.length;
    }, 4000);
    if (!r.hit) break;
  }
  s.end();
  return { ok: refused === 0 && done === 3 * Math.min(max, 40), detail: `${done} streams completed in 3 rounds, ${refused} refused` };
} });
