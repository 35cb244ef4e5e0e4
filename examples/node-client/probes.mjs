// Probes of an ATP/1 router, each from the text of spec/atp-v1.md alone. A probe returns
// {ok, detail}; `ids` are the requirements it checks. See README.md for the findings.
import { Session, syn } from './session.mjs';
import { frame, concat, T, F, CLOSE, decodePayload } from './frame.mjs';
import { Raw, encode } from './cbor.mjs';

const code = (f) => (f && !f.text && f.type === T.ERROR ? f.ext.error?.code ?? null : null);
const isErr = (stream) => (f) => !f.text && f.type === T.ERROR && f.stream === stream;
const desc = (f) => (f == null ? 'nothing' : f.text ? `text ${JSON.stringify(f.json)}`
  : `type ${f.type} stream ${f.stream} seq ${f.msgSeq}/${f.fragSeq} flags 0x${f.flags.toString(16)} ext ${JSON.stringify(f.ext)}`);

async function fresh(ctx, caps = {}, opts = {}) {
  const s = await Session.open(ctx.url, { ...ctx.auth, ...opts });
  if (s.refused) throw new Error(`handshake refused: HTTP ${s.refused}`);
  s.send(s.caps(caps));
  const r = await s.until((f) => !f.text && f.type === T.CAPABILITIES, 2000);
  if (!r.hit) throw new Error('no CAPABILITIES from the router');
  s.routerCaps = r.hit.ext.caps;
  return s;
}

/** A stream error `want` on `stream`, then the session still answers a heartbeat. */
async function streamError(s, stream, want, timeoutMs = 2000) {
  const r = await s.until(isErr(stream), timeoutMs);
  const got = code(r.hit);
  if (got !== want) return { ok: false, detail: `want stream error ${want} on ${stream}, got ${desc(r.hit)}` };
  if (!(r.hit.flags & F.RST)) return { ok: false, detail: 'ERROR on a stream without RST (§4.3)' };
  if (typeof r.hit.ext.error.message !== 'string') return { ok: false, detail: 'ERROR without a text message' };
  const b = await s.barrier();
  if (!b.ok) return { ok: false, detail: `${want} ok, but the session did not survive (close ${s.closeCode})` };
  return { ok: true, detail: `${want}: ${r.hit.ext.error.message}`, error: r.hit.ext.error };
}

/** A connection error `want` on stream 0, then the close code of §11. */
async function connError(s, want, timeoutMs = 2000) {
  const r = await s.until(isErr(0), timeoutMs);
  const got = code(r.hit);
  const closed = await s.closed(timeoutMs);
  if (got !== want) return { ok: false, detail: `want connection error ${want}, got ${desc(r.hit)} (close ${s.closeCode})` };
  if (!closed) return { ok: false, detail: `${want} sent but the transport stayed open` };
  if (s.closeCode !== CLOSE[want]) return { ok: false, detail: `${want} sent, close code ${s.closeCode}, want ${CLOSE[want]}` };
  return { ok: true, detail: `${want} + close ${s.closeCode}: ${r.hit.ext.error.message}` };
}

/** The stream completes: MOREs then one FIN, msg_seq from SYN+1, telemetry on the FINAL. */
function checkComplete(r, synSeq = 1) {
  if (!r.end) return `no end of stream (${r.frames.length} frames)`;
  if (r.end.type === T.ERROR) return `stream ended with ${code(r.end)}: ${r.end.ext.error?.message}`;
  const data = r.frames.filter((f) => f.type === T.DATA);
  let seq = synSeq + 1, frag = 0;
  for (const f of data) {
    if (f.msgSeq !== seq || f.fragSeq !== frag) return `router msg_seq/frag_seq ${f.msgSeq}/${f.fragSeq}, want ${seq}/${frag}`;
    if (f.flags & F.CONT) { frag++; continue; }
    const last = f === data[data.length - 1];
    if (last !== Boolean(f.flags & F.FIN)) return 'FIN not on the last message only';
    if (!last && !(f.flags & F.MORE)) return 'a non-final message without MORE (ATP-FLAG-008)';
    if (last && (f.flags & F.MORE)) return 'MORE with FIN (ATP-FLAG-008)';
    seq++; frag = 0;
  }
  return null;
}

/** The frames of each stream in `ids` until every one has ended: {id: {frames, end}}. */
async function streams(s, ids, timeoutMs = 3000) {
  const out = Object.fromEntries(ids.map((i) => [i, { frames: [], end: null }]));
  let left = ids.length;
  const r = await s.until((f) => {
    const o = !f.text && out[f.stream];
    if (!o || o.end) return false;
    o.frames.push(f);
    if (f.type === T.ERROR || (f.type === T.DATA && (f.flags & (F.FIN | F.RST)))) { o.end = f; left--; }
    return left === 0;
  }, timeoutMs);
  for (const o of Object.values(out)) o.all = r.seen;
  return out;
}

const P = [];
const probe = (name, ids, fn) => P.push({ name, ids, fn });

// ---- sessions and CAPABILITIES --------------------------------------------------------
probe('caps_answered', ['ATP-SESS-002', 'ATP-SESS-010'], async (ctx) => {
  const s = await fresh(ctx);
  const c = s.routerCaps;
  if (!Array.isArray(c.versions) || !c.versions.includes(1)) return { ok: false, detail: `versions ${c.versions}` };
  s.send(s.caps({ max_streams: 50 }));
  const b = await s.barrier();
  const again = b.before.filter((f) => f.type === T.CAPABILITIES);
  s.end();
  return { ok: b.ok && again.length === 0, detail: `router caps ${JSON.stringify(c)}; second CAPABILITIES answered ${again.length} times` };
});
probe('caps_bad_version', ['ATP-SESS-003'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.send(frame({ type: T.CAPABILITIES, ext: { caps: { versions: [2] } } }));
  return connError(s, 'EPROTO');
});
probe('caps_no_versions', ['ATP-SESS-017'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.send(frame({ type: T.CAPABILITIES, ext: { caps: { features: [] } } }));
  return connError(s, 'EPROTO');
});
probe('caps_without_caps', ['ATP-FRAME-013'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.send(frame({ type: T.CAPABILITIES, ext: { 'x-other': 1 } }));
  return connError(s, 'EPROTO');
});
probe('caps_on_stream', ['ATP-FRAME-013'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ type: T.CAPABILITIES, stream: 7, ext: { caps: { versions: [1] } } }));
  return streamError(s, 7, 'EPROTO');
});
probe('caps_limit_out_of_range_ignored', ['ATP-SESS-008'], async (ctx) => {
  const s = await fresh(ctx, { initial_window: 0, max_frame_size: 10 });
  s.send(syn(1));
  const r = await s.stream(1);
  s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'stream completed with the default limits' };
});
probe('syn_with_caps_same_message', ['ATP-SESS-014', 'ATP-FRAME-009'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.send(s.caps(), syn(1), syn(3, { prompt: 'two' }));
  const { 1: r1, 3: r3 } = await streams(s, [1, 3]);
  s.end();
  const bad = checkComplete(r1) ?? checkComplete(r3);
  return { ok: !bad, detail: bad ?? 'CAPABILITIES and two SYNs in one message: both streams completed' };
});
probe('no_caps_at_all', ['ATP-SESS-001'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.send(syn(1));
  const r = await s.stream(1);
  s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'completed without CAPABILITIES' };
});

// ---- header rules ----------------------------------------------------------------------
probe('bad_version', ['ATP-FRAME-003'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ version: 2, flags: F.HB, payload: Uint8Array.of(1) }));
  return connError(s, 'EPROTO');
});
probe('reserved_stream_bit', ['ATP-FRAME-004'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.SYN, stream: 1, msgSeq: 1, reservedBit: true, payload: { type: 'agent.task', content: { prompt: 'x' } } }));
  return connError(s, 'EPROTO');
});
probe('data_on_stream0', ['ATP-FRAME-011'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ payload: Uint8Array.of(1) }));
  return connError(s, 'EPROTO');
});
probe('window_update_on_stream0', ['ATP-FRAME-012'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ type: T.WINDOW_UPDATE, ext: { credit: 10 } }));
  return connError(s, 'EPROTO');
});
probe('unknown_type_ignored', ['ATP-FRAME-010'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ type: 0x7e, flags: 0xff, qos: 200, ext: Uint8Array.of(0xff, 0x00, 0xc1), payload: Uint8Array.of(9) }),
    frame({ type: 0x90, stream: 99, ext: Uint8Array.of(0x1f), msgSeq: 77 }));
  s.send(syn(1));
  const r = await s.stream(1);
  const b = await s.barrier();
  s.end();
  const bad = checkComplete(r);
  return { ok: !bad && b.ok, detail: bad ?? 'unknown types 0x7e (stream 0) and 0x90 (stream 99) skipped' };
});
probe('qos_above_3', ['ATP-FRAME-007'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { qos: 4 }));
  return streamError(s, 1, 'EPROTO');
});
probe('reserved_flag_ignored', ['ATP-FLAG-001'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { flags: 0x80 }));
  const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'SYN with flag bit 0x80 served' };
});
probe('hb_on_stream_ignored', ['ATP-FLAG-006'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { flags: F.HB }));
  const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'SYN with HB served as a SYN' };
});

// ---- ext CBOR --------------------------------------------------------------------------
const badExt = {
  tag: Uint8Array.of(0xa1, 0x64, ...Buffer.from('meta'), 0xc1, 0x00), // {"meta": 1(0)}
  indefinite: Uint8Array.of(0xbf, 0x61, 0x61, 0x01, 0xff),
  duplicate: Uint8Array.of(0xa2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02),
  nan: Uint8Array.of(0xa1, 0x61, 0x61, 0xf9, 0x7e, 0x00),
  infinity: Uint8Array.of(0xa1, 0x61, 0x61, 0xfa, 0x7f, 0x80, 0x00, 0x00),
  trailing: Uint8Array.of(0xa1, 0x61, 0x61, 0x01, 0x00),
  not_a_map: Uint8Array.of(0x83, 0x01, 0x02, 0x03),
  int_key: Uint8Array.of(0xa1, 0x01, 0x02),
  truncated: Uint8Array.of(0xa2, 0x61, 0x61),
  bad_utf8: Uint8Array.of(0xa1, 0x61, 0x61, 0x62, 0xc3, 0x28),
  deep: encode({ meta: JSON.parse('{"a":'.repeat(20) + '1' + '}'.repeat(20)) }),
};
for (const [k, ext] of Object.entries(badExt)) {
  probe(`ext_${k}_on_syn`, ['ATP-FRAME-005', 'ATP-FRAME-006'], async (ctx) => {
    const s = await fresh(ctx);
    s.send(syn(1, { ext }));
    return streamError(s, 1, 'EPROTO');
  });
}
probe('ext_tag_on_stream0', ['ATP-FRAME-006'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  s.send(frame({ type: T.CAPABILITIES, ext: encode({ caps: { versions: [1], 'x-t': new Raw([0xc1, 0x00]) } }) }));
  return connError(s, 'EPROTO');
});
probe('ext_reserved_key', ['ATP-JSON-015'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { ext: { msg_seq: 3 } }));
  return streamError(s, 1, 'EPROTO');
});
probe('ext_session_id_too_long', ['ATP-EXT-010'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { ext: { session_id: 'x'.repeat(129) } }));
  return streamError(s, 1, 'EPROTO');
});
probe('ext_empty_map_accepted', ['ATP-FRAME-005'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { ext: Uint8Array.of(0xa0) }));
  const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'ext 0xa0 accepted' };
});
probe('unknown_ext_keys_ignored', ['ATP-EXT-001', 'ATP-EXT-004'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { ext: { 'x-acme': { a: [1, 2] }, window: { max_tokens: 100000, 'x-w': true }, meta: { 'x-m': 1 } } }));
  const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'unknown keys ignored' };
});

// ---- WebSocket message framing -----------------------------------------------------------
probe('message_ends_inside_header', ['ATP-WS-001'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.HB, payload: Uint8Array.of(1) }).subarray(0, 10));
  return connError(s, 'EPROTO');
});
probe('message_ends_inside_body', ['ATP-WS-001'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1).subarray(0, 30));
  return connError(s, 'EPROTO');
});
probe('payload_len_past_message', ['ATP-WS-001'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.HB, payload: Uint8Array.of(1, 2), payloadLen: 40 }));
  return connError(s, 'EPROTO');
});
probe('frame_over_max_frame_size_on_stream', ['ATP-LIMIT-001', 'ATP-WS-012'], async (ctx) => {
  const s = await fresh(ctx);
  // a whole frame one byte over max_frame_size, in a message within ATP-WS-011's bound
  s.send(frame({ flags: F.SYN, stream: 1, msgSeq: 1, payload: new Uint8Array(1048577) }));
  return streamError(s, 1, 'ETOOBIG');
});
probe('ws_message_over_limit', ['ATP-WS-011', 'ATP-WS-012'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.HB, payload: new Uint8Array(1048576 + 65536 + 10) }));
  return connError(s, 'ETOOBIG');
});

export const PROBES = P;
export { streams, fresh, streamError, connError, checkComplete, code, desc, isErr };
