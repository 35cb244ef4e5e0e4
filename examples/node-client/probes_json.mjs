// Probes of the JSON text mapping (spec §13.3, §13.4) over WebSocket text messages.
import { Session, SLACK } from './session.mjs';
import { T } from './frame.mjs';
import { CLOSE } from './frame.mjs';

const P = [];
const probe = (name, ids, fn) => P.push({ name, ids, fn });

// §13.4 SYN, verbatim
const SEED_SYN = `{
  "v":1,
  "session_id":"s1",
  "stream_id":"st1",
  "msg_seq":1,
  "frag_seq":0,
  "flags":["SYN"],
  "qos":"gold",
  "ttl":8,
  "window": {"max_parallel":4, "max_tokens":50000, "max_usd_micros":1000000},
  "meta": {"task_type":"qa", "tool_permissions":[], "data_scope":["no_secrets"]},
  "payload": {"type":"agent.result.partial", "content":{"prompt":"hello"}}
}`;

const open = async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  if (s.refused) throw new Error(`handshake refused: HTTP ${s.refused}`);
  return s;
};
const textOf = (alias) => (f) => f.text && f.json.stream_id === alias;
const ends = (f) => f.json.type === 'ERROR' || f.json.type === 4 || (f.json.flags ?? []).includes('FIN');

async function jsonStream(s, alias, timeoutMs = 3000) {
  const r = await s.until((f) => textOf(alias)(f) && ends(f), timeoutMs);
  return { frames: r.seen.filter(textOf(alias)), end: r.hit, all: r.seen };
}
function checkJsonComplete(r, synSeq = 1) {
  if (!r.end) return `no end of stream; saw ${r.all.map((f) => JSON.stringify(f.json ?? f.type)).join(' ')}`;
  if (r.end.json.error) return `ended with ${JSON.stringify(r.end.json.error)}`;
  let seq = synSeq + 1;
  for (const f of r.frames) {
    if ((f.json.msg_seq ?? 0) !== seq) return `msg_seq ${f.json.msg_seq}, want ${seq}`;
    if (!(f.json.flags ?? []).includes('CONT')) seq++;
  }
  return null;
}
async function jsonErr(s, alias, want, scope = 'stream') {
  const r = await s.until((f) => f.text && (f.json.type === 'ERROR' || f.json.type === 4), 2000);
  const e = r.hit?.json;
  if (!e) return { ok: false, detail: `want ${scope} error ${want}, got nothing (close ${s.closeCode}; bin ${r.seen.filter((f) => !f.text).length})` };
  if (e.error?.code !== want) return { ok: false, detail: `want ${want}, got ${JSON.stringify(e)}` };
  if (scope === 'connection') {
    const closed = await s.closed(2000);
    const sid = e.stream_id ?? 0;
    if (sid !== 0) return { ok: false, detail: `connection error on stream ${sid}` };
    return { ok: closed && s.closeCode === CLOSE[want], detail: `${want} on stream 0, close ${s.closeCode}: ${e.error.message}` };
  }
  if (e.stream_id !== alias) return { ok: false, detail: `error on stream ${JSON.stringify(e.stream_id)}, want ${alias}: ${JSON.stringify(e)}` };
  s.sendText({ flags: ['HB'], payload_b64: 'AAE=' });
  const hb = await s.until((f) => f.text && (f.json.flags ?? []).includes('ACK'), 2000);
  return { ok: Boolean(hb.hit), detail: `${want}: ${e.error.message}${hb.hit ? '' : ' (session did not survive)'}` };
}

probe('json_seed_syn', ['ATP-JSON-001', 'ATP-JSON-007', 'ATP-JSON-016', 'ATP-WS-004', 'ATP-FLOW-007'], async (ctx) => {
  const s = await open(ctx);
  s.sendText(SEED_SYN);
  const r = await jsonStream(s, 'st1');
  s.end();
  const bad = checkJsonComplete(r);
  if (bad) return { ok: false, detail: bad };
  const first = r.frames[0].json;
  if (first.stream_num !== 1) return { ok: false, detail: `first DATA stream_num ${first.stream_num}, want 1 (ATP-JSON-016)` };
  const noSid = r.frames.find((f) => f.json.session_id !== 's1');
  if (noSid) return { ok: false, detail: `text frame without session_id "s1": ${JSON.stringify(noSid.json)}` };
  if (r.all.some((f) => !f.text)) return { ok: false, detail: 'binary frames on a JSON session' };
  return { ok: true, detail: `FINAL ${JSON.stringify(r.end.json.payload)}` };
});
probe('json_alias_reused', ['ATP-JSON-003', 'ATP-JSON-002'], async (ctx) => {
  const s = await open(ctx);
  s.sendText(SEED_SYN);
  const a = await jsonStream(s, 'st1');
  s.sendText(SEED_SYN);
  const b = await jsonStream(s, 'st1');
  s.end();
  const bad = checkJsonComplete(a) ?? checkJsonComplete(b);
  const n = b.frames[0]?.json.stream_num;
  return { ok: !bad && n === 2, detail: bad ?? `second stream under "st1" got stream_num ${n}` };
});
probe('json_numeric_id_and_absent_keys', ['ATP-JSON-008', 'ATP-JSON-012'], async (ctx) => {
  const s = await open(ctx);
  s.sendText({ payload: { type: 'agent.task', content: { prompt: 'n' } }, flags: ['SYN'], stream_id: 7, msg_seq: 1 });
  const r = await s.until((f) => f.text && f.json.stream_id === 7 && ends(f), 3000);
  s.end();
  return { ok: Boolean(r.hit) && !r.hit.json.error, detail: r.hit ? JSON.stringify(r.hit.json).slice(0, 200) : 'no answer' };
});
probe('json_heartbeat', ['ATP-TIME-002', 'ATP-JSON-004'], async (ctx) => {
  const s = await open(ctx);
  s.sendText({ flags: ['HB'], payload_b64: 'AQID' });
  const r = await s.until((f) => f.text && (f.json.flags ?? []).includes('HB'), 2000);
  s.end();
  const j = r.hit?.json;
  return { ok: j && j.flags.includes('ACK') && j.payload_b64 === 'AQID' && !('payload' in j), detail: JSON.stringify(j) };
});
probe('json_not_object', ['ATP-JSON-006'], async (ctx) => {
  const s = await open(ctx);
  s.sendText('[1,2,3]');
  return jsonErr(s, 0, 'EPROTO', 'connection');
});
probe('json_duplicate_v', ['ATP-JSON-017'], async (ctx) => {
  const s = await open(ctx);
  s.sendText('{"v":1,"v":1,"stream_id":"d","flags":["SYN"],"payload":{"type":"agent.task","content":{"prompt":"x"}}}');
  return jsonErr(s, 0, 'EPROTO', 'connection');
});
probe('json_nan', ['ATP-JSON-017'], async (ctx) => {
  const s = await open(ctx);
  s.sendText('{"stream_id":"n","flags":["SYN"],"ttl":NaN,"payload":{"type":"agent.task","content":{"prompt":"x"}}}');
  return jsonErr(s, 0, 'EPROTO', 'connection');
});
probe('json_duplicate_nested', ['ATP-JSON-017'], async (ctx) => {
  const s = await open(ctx);
  s.sendText('{"stream_id":"dn","flags":["SYN"],"payload":{"type":"agent.task","content":{"prompt":"x","prompt":"y"}}}');
  return jsonErr(s, 'dn', 'EPROTO');
});
probe('json_lone_surrogate', ['ATP-JSON-017'], async (ctx) => {
  const s = await open(ctx);
  s.sendText('{"stream_id":"ls","flags":["SYN"],"payload":{"type":"agent.task","content":{"prompt":"\\ud800"}}}');
  return jsonErr(s, 'ls', 'EPROTO');
});
probe('json_huge_integer', ['ATP-JSON-017'], async (ctx) => {
  const s = await open(ctx);
  s.sendText('{"stream_id":"hi","flags":["SYN"],"payload":{"type":"agent.task","content":{"prompt":"x","n":18446744073709551616}}}');
  return jsonErr(s, 'hi', 'EPROTO');
});
probe('json_overflowing_float', ['ATP-JSON-017'], async (ctx) => {
  const s = await open(ctx);
  s.sendText('{"stream_id":"of","flags":["SYN"],"payload":{"type":"agent.task","content":{"prompt":"x","f":1e999}}}');
  return jsonErr(s, 'of', 'EPROTO');
});
probe('json_fractional_ttl', ['ATP-JSON-010'], async (ctx) => {
  const s = await open(ctx);
  s.sendText('{"stream_id":"ft","flags":["SYN"],"ttl":1.5,"payload":{"type":"agent.task","content":{"prompt":"x"}}}');
  return jsonErr(s, 'ft', 'EPROTO');
});
probe('json_exponent_msg_seq', ['ATP-JSON-010'], async (ctx) => {
  const s = await open(ctx);
  s.sendText('{"stream_id":"ex","flags":["SYN"],"msg_seq":1e0,"payload":{"type":"agent.task","content":{"prompt":"x"}}}');
  return jsonErr(s, 'ex', 'EPROTO');
});
probe('json_payload_and_b64', ['ATP-JSON-004'], async (ctx) => {
  const s = await open(ctx);
  s.sendText({ stream_id: 'pb', flags: ['SYN'], payload: { type: 'agent.task', content: { prompt: 'x' } }, payload_b64: 'AA==' });
  return jsonErr(s, 'pb', 'EPROTO');
});
probe('json_unknown_type_and_flag', ['ATP-JSON-005', 'ATP-JSON-009'], async (ctx) => {
  const s = await open(ctx);
  s.sendText({ type: 'ROUTE_UPDATE', stream_id: 'u', flags: ['WHATEVER'], msg_seq: 'not even a number' });
  s.sendText({ type: 99, stream_id: 'u2' });
  s.sendText({ stream_id: 'u3', msg_seq: 1, flags: ['SYN', 'SHINY'], payload: { type: 'agent.task', content: { prompt: 'x' } } });
  const r = await jsonStream(s, 'u3');
  s.end();
  const bad = checkJsonComplete(r);
  return { ok: !bad, detail: bad ?? 'unknown type names/numbers skipped, unknown flag ignored' };
});
probe('json_type_by_number', ['ATP-JSON-009'], async (ctx) => {
  const s = await open(ctx);
  s.sendText({ type: 0, stream_id: 'tn', msg_seq: 1, flags: ['SYN'], payload: { type: 'agent.task', content: { prompt: 'x' } } });
  const r = await jsonStream(s, 'tn'); s.end();
  const bad = checkJsonComplete(r);
  return { ok: !bad, detail: bad ?? 'type 0 read as DATA' };
});
probe('json_alias_too_long', ['ATP-JSON-006'], async (ctx) => {
  const s = await open(ctx);
  s.sendText({ stream_id: 'a'.repeat(129), flags: ['SYN'], payload: { type: 'agent.task', content: { prompt: 'x' } } });
  return jsonErr(s, 0, 'EPROTO', 'connection');
});
probe('json_non_syn_unknown_alias', ['ATP-JSON-013'], async (ctx) => {
  const s = await open(ctx);
  s.sendText({ stream_id: 'ghost', msg_seq: 2, payload: 1 });
  return jsonErr(s, 'ghost', 'EPROTO');
});
probe('json_text_over_limit', ['ATP-WS-012'], async (ctx) => {
  const s = await open(ctx);
  s.sendText(JSON.stringify({ stream_id: 'big', flags: ['SYN'], payload: { type: 'agent.task', content: { prompt: 'x'.repeat(1048576) } } }));
  return jsonErr(s, 0, 'ETOOBIG', 'connection');
});
probe('json_credit_counts_utf8_bytes', ['ATP-FLOW-008', 'ATP-FLOW-014'], async (ctx) => {
  const W = 4096;
  const s = await open(ctx);
  s.sendText({ type: 'CAPABILITIES', caps: { versions: [1], initial_window: W } });
  const prompt = 'é€'.repeat(3000); // multi-byte UTF-8: bytes, not characters, are charged
  s.sendText({ stream_id: 'cr', flags: ['SYN'], msg_seq: 1, payload: { type: 'agent.task', content: { prompt } } });
  let credit = W, unret = 0, end = null, n = 0;
  const deadline = Date.now() + 5000 * SLACK;
  while (!end && Date.now() < deadline) {
    const f = await s.recv(1500);
    if (!f) return { ok: false, detail: `stalled, credit ${credit}` };
    if (!f.text || f.json.stream_id !== 'cr') continue;
    if (f.json.error) return { ok: false, detail: JSON.stringify(f.json) };
    const t = f.json.type ?? 'DATA';
    if (t !== 'DATA' && t !== 0) continue;
    if (f.cost > credit) return { ok: false, detail: `text frame of ${f.cost} bytes with ${credit} credit` };
    credit -= f.cost; unret += f.cost; n++;
    if ((f.json.flags ?? []).includes('FIN')) end = f;
    if (unret >= W / 2) { s.sendText({ type: 'WINDOW_UPDATE', stream_id: 'cr', credit: unret }); credit += unret; unret = 0; }
  }
  s.end();
  return { ok: Boolean(end), detail: end ? `${n} text frames within a ${W}-byte window` : 'no FINAL' };
});

export const PROBES = P;

// A SYN refused under an alias still takes the stream id the router names in stream_num
// (ATP-JSON-016); a numeric SYN on that id must then be refused (ATP-STREAM-002), or a
// late frame on the alias would act on the numeric stream (ATP-JSON-014: never collide).
P.push({ name: 'json_refused_alias_id_stays_used', ids: ['ATP-STREAM-002', 'ATP-JSON-014', 'ATP-JSON-016'], fn: async (ctx) => {
  const { syn } = await import('./session.mjs');
  const s = await open(ctx);
  s.sendText({ stream_id: 'bad', msg_seq: 1, flags: ['SYN'], qos: 'platinum', payload: { type: 'agent.task', content: { prompt: 'x' } } });
  const e = await s.until((f) => f.text && f.json.stream_id === 'bad', 2000);
  const n = e.hit?.json.stream_num;
  if (!Number.isInteger(n)) { s.end(); return { ok: false, detail: `refusal without stream_num: ${JSON.stringify(e.hit?.json)}` }; }
  s.send(syn(n, { prompt: 'numeric' }));
  const r = await s.until((f) => !f.text && f.stream === n && (f.type === T.ERROR || (f.flags & 0x08)), 2000);
  s.end();
  const c = r.hit?.type === T.ERROR ? r.hit.ext.error?.code : 'served';
  return { ok: c === 'EPROTO', detail: `alias "bad" refused as stream_num ${n}; a binary SYN on ${n} then: ${c}` };
} });

P.push({ name: 'json_fragmented_syn', ids: ['ATP-SEQ-010', 'ATP-SEQ-012', 'ATP-JSON-004'], fn: async (ctx) => {
  const { encode } = await import('./cbor.mjs');
  const s = await open(ctx);
  const body = Buffer.from(encode({ type: 'agent.task', content: { prompt: 'text fragments' } }));
  s.sendText({ stream_id: 'fr', msg_seq: 1, flags: ['SYN', 'CONT'], payload_b64: body.subarray(0, 10).toString('base64') });
  s.sendText({ stream_id: 'fr', msg_seq: 1, frag_seq: 1, payload_b64: body.subarray(10).toString('base64') });
  const r = await jsonStream(s, 'fr'); s.end();
  const bad = checkJsonComplete(r);
  const ans = r.end?.json.payload?.content?.answer;
  return { ok: !bad && ans === 'text fragments', detail: bad ?? `a SYN in two text fragments (payload_b64): answer ${JSON.stringify(ans)}` };
} });
