// Edge probes: boundaries of the limits, odd JSON header values, ERROR/RST on idle streams.
import { Session, syn } from './session.mjs';
import { frame, T, F } from './frame.mjs';
import { fresh, streamError, connError, checkComplete, code, desc, isErr } from './probes.mjs';

const P = [];
const probe = (name, ids, fn) => P.push({ name, ids, fn });
const TASK = { type: 'agent.task', content: { prompt: 'x' } };

async function textError(s, timeoutMs = 2000) {
  const r = await s.until((f) => f.text && (f.json.type === 'ERROR'), timeoutMs);
  return r.hit?.json ?? null;
}

probe('coalesced_messages_within_peer_limit', ['ATP-WS-011', 'ATP-WS-005'], async (ctx) => {
  const s = await fresh(ctx, { initial_window: 4096, max_frame_size: 1024 }, { initialWindow: 4096, autoCredit: false });
  const ids = Array.from({ length: 60 }, (_, i) => 2 * i + 1);
  s.send(...ids.map((i) => syn(i, { prompt: 'c'.repeat(3000) })));
  await new Promise((r) => setTimeout(r, 400));
  s.send(...ids.map((i) => frame({ type: T.WINDOW_UPDATE, stream: i, ext: { credit: 100000 } })));
  const done = new Set();
  await s.until((f) => { if (f.type === T.DATA && (f.flags & F.FIN)) done.add(f.stream); return done.size === ids.length; }, 4000);
  s.end();
  const limit = 1024 + 65536;
  return { ok: done.size === ids.length && s.maxBinary <= limit, detail: `${done.size} streams done; largest binary message ${s.maxBinary} (limit ${limit})` };
});
probe('text_message_at_limit', ['ATP-WS-012', '§12 max text message'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  const head = JSON.stringify({ stream_id: 'edge', msg_seq: 1, flags: ['SYN'], payload: { type: 'agent.task', content: { prompt: 'x', pad: '' } } });
  const pad = 1048576 - Buffer.byteLength(head);
  const text = head.replace('"pad":""', `"pad":"${'p'.repeat(pad)}"`);
  s.sendText(text);
  const r = await s.until((f) => f.text && f.json.stream_id === 'edge' && (f.json.type === 'ERROR' || (f.json.flags ?? []).includes('FIN')), 4000);
  s.end();
  return { ok: r.hit != null && r.hit.json.type !== 'ERROR', detail: `a text message of ${Buffer.byteLength(text)} bytes: ${r.hit ? (r.hit.json.error ? JSON.stringify(r.hit.json.error) : 'served') : 'nothing'}` };
});
probe('json_stream_id_fraction', ['ATP-JSON-010', 'ATP-JSON-006'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.sendText('{"stream_id":1.0,"msg_seq":1,"flags":["SYN"],"payload":{"type":"agent.task","content":{"prompt":"x"}}}');
  const e = await textError(s); const closed = await s.closed(2000);
  return { ok: e?.error?.code === 'EPROTO' && (e.stream_id ?? 0) === 0 && closed, detail: `${JSON.stringify(e)} closed ${closed}` };
});
probe('json_stream_id_out_of_range', ['ATP-JSON-010', 'ATP-JSON-006'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.sendText({ stream_id: 2147483648, msg_seq: 1, flags: ['SYN'], payload: TASK });
  const e = await textError(s); const closed = await s.closed(2000);
  return { ok: e?.error?.code === 'EPROTO' && closed, detail: `${JSON.stringify(e)} closed ${closed}` };
});
probe('json_flags_not_array', ['ATP-JSON-006'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.sendText({ stream_id: 'fna', msg_seq: 1, flags: 'SYN', payload: TASK });
  const e = await textError(s);
  s.sendText({ flags: ['HB'], payload_b64: 'AQ==' });
  const hb = await s.until((f) => f.text && (f.json.flags ?? []).includes('ACK'), 2000); s.end();
  return { ok: e?.error?.code === 'EPROTO' && e.stream_id === 'fna' && hb.hit != null, detail: `${JSON.stringify(e)}; session ${hb.hit ? 'alive' : 'gone'}` };
});
probe('json_bad_base64', ['ATP-JSON-004', 'ATP-JSON-006'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.sendText({ stream_id: 'b64', msg_seq: 1, flags: ['SYN'], payload_b64: '!!not base64' });
  const e = await textError(s); s.end();
  return { ok: e?.error?.code === 'EPROTO' && e.stream_id === 'b64', detail: JSON.stringify(e) };
});
probe('json_session_id_too_long', ['ATP-EXT-010'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.sendText({ session_id: 's'.repeat(129), stream_id: 'sid', msg_seq: 1, flags: ['SYN'], payload: TASK });
  const e = await textError(s); s.end();
  return { ok: e?.error?.code === 'EPROTO' && e.stream_id === 'sid' && !('session_id' in e && e.session_id.length > 128), detail: JSON.stringify(e).slice(0, 200) };
});
probe('caps_versions_not_integers', ['ATP-SESS-003', 'ATP-SESS-017'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.send(frame({ type: T.CAPABILITIES, ext: { caps: { versions: ['1'] } } }));
  return connError(s, 'EPROTO');
});
probe('later_caps_without_versions', ['ATP-SESS-017'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ type: T.CAPABILITIES, ext: { caps: { max_streams: 5 } } }));
  return connError(s, 'EPROTO');
});
probe('heartbeat_reply_65', ['ATP-TIME-003'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.HB | F.ACK, payload: Buffer.alloc(65) }));
  return connError(s, 'ETOOBIG');
});
probe('error_on_idle_stream', ['ATP-ERR-011', 'ATP-STREAM-009'], async (ctx) => {
  // a well-formed ERROR on a stream never opened: ERR-011 (never answer an ERROR) vs STREAM-009
  const s = await fresh(ctx);
  s.send(frame({ type: T.ERROR, flags: F.RST, stream: 11, ext: { error: { code: 'EX_X', message: 'm' } } }));
  const b = await s.barrier(); s.end();
  const errs = b.before.filter((f) => f.type === T.ERROR);
  return { ok: b.ok && errs.length === 0, detail: errs.length ? `answered: ${desc(errs[0])}` : 'ignored (ATP-ERR-011)' };
});
probe('bare_rst_on_idle_stream', ['ATP-STREAM-003', 'ATP-STREAM-009', 'ATP-FLAG-004'], async (ctx) => {
  // a bare RST is a DATA frame: on an id never opened it is EPROTO (ATP-STREAM-003, and
  // the table has no "idle / recv RST"); ATP-FLAG-004's discard is for streams "opened and
  // now closed" only
  const s = await fresh(ctx);
  s.send(frame({ flags: F.RST, stream: 13, msgSeq: 1 }));
  const r = await streamError(s, 13, 'EPROTO', 1000);
  return r.ok ? r : { ok: false, detail: `${r.detail} (the reference discards it)` };
});
probe('budget_update_on_stream0', ['ATP-FRAME-012'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ type: T.BUDGET_UPDATE, ext: { usage: { tokens: 1, usd_micros: 0, parallel: 0 } } }));
  return connError(s, 'EPROTO');
});
probe('binary_message_at_limit', ['ATP-WS-011'], async (ctx) => {
  const s = await fresh(ctx);
  // one HB-free message of exactly max_frame_size + 65,536 bytes: frames of an unknown type
  const total = 1048576 + 65536, n = 4, each = total / n;
  s.send(...Array.from({ length: n }, () => frame({ type: 0x7d, payload: new Uint8Array(each - 24) })));
  const b = await s.barrier(); s.end();
  return { ok: b.ok, detail: b.ok ? `a binary message of ${total} bytes accepted` : `session gone (close ${s.closeCode})` };
});

export const PROBES = P;

P.push({ name: 'fragments_interleaved_with_other_streams', ids: ['ATP-SEQ-012', '§7.3'], fn: async (ctx) => {
  const s = await fresh(ctx);
  const whole = Buffer.from(syn(1, { prompt: 'interleaved' }).subarray(24));
  s.send(frame({ flags: F.SYN | F.CONT, qos: 2, stream: 1, msgSeq: 1, payload: whole.subarray(0, 9) }),
    syn(3, { prompt: 'between' }),
    frame({ stream: 1, msgSeq: 1, fragSeq: 1, payload: whole.subarray(9) }));
  const { streams } = await import('./probes.mjs');
  const r = await streams(s, [1, 3]); s.end();
  const bad = checkComplete(r[1]) ?? checkComplete(r[3]);
  return { ok: !bad, detail: bad ?? 'a SYN between the fragments of another stream\'s SYN: both served' };
} });
