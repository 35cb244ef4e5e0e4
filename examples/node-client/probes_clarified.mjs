// Probes of the spec points this client found unclear (README "Where the spec was
// unclear"), as the spec now decides them: each names the requirement that settled it.
import { Session, syn } from './session.mjs';
import { frame, F, CLOSE } from './frame.mjs';
import { fresh, streamError, checkComplete, code, desc, isErr } from './probes.mjs';

const P = [];
const probe = (name, ids, fn) => P.push({ name, ids, fn });

for (const [name, meta] of [['array', [1]], ['text', 'qa'], ['number', 7]]) {
  probe(`syn_meta_${name}`, ['ATP-FRAME-025'], async (ctx) => {
    const s = await fresh(ctx);
    s.send(syn(1, { ext: { meta } }));
    return streamError(s, 1, 'EPROTO');
  });
}
for (const [key, value] of [['task_type', 42], ['adapters', 'echo'], ['fanout', '2'], ['min_confidence', 'high']]) {
  probe(`syn_meta_${key}_wrong_type`, ['ATP-FRAME-025'], async (ctx) => {
    const s = await fresh(ctx);
    s.send(syn(1, { meta: { [key]: value } }));
    const r = await streamError(s, 1, 'EPROTO');
    if (r.ok && !r.error.message.includes(key)) return { ok: false, detail: `EPROTO without naming ${key}: ${r.error.message}` };
    return r;
  });
}

// ATP-STREAM-002: a refused SYN uses its id, whatever refused it (the ext, a header field)
for (const [why, bad] of [['meta', { ext: { meta: [1] } }], ['qos', { qos: 4 }], ['window', { window: 5 }]]) {
  probe(`syn_refused_for_${why}_uses_its_id`, ['ATP-STREAM-002'], async (ctx) => {
    const s = await fresh(ctx);
    s.send(syn(5, bad));
    const first = await streamError(s, 5, 'EPROTO');
    if (!first.ok) { s.end(); return first; }
    s.send(syn(5));
    const again = await streamError(s, 5, 'EPROTO');
    if (!again.ok) { s.end(); return { ok: false, detail: `the same id again: ${again.detail}` }; }
    s.send(syn(3));
    const lower = await streamError(s, 3, 'EPROTO');
    if (!lower.ok) { s.end(); return { ok: false, detail: `a lower id: ${lower.detail}` }; }
    s.send(syn(7));
    const r = await s.stream(7); s.end();
    const bad7 = checkComplete(r);
    return { ok: !bad7, detail: bad7 ?? `id 5 used after its SYN was refused (${why}); 7 served` };
  });
}

// ATP-WS-001: a message within the limit that ends inside a frame announcing a body over
// max_frame_size is a connection error EPROTO only, with no ETOOBIG on its stream first
probe('message_ends_inside_oversized_frame', ['ATP-WS-001', 'ATP-LIMIT-001'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.SYN, stream: 1, msgSeq: 1, payload: new Uint8Array(16), payloadLen: 0xffffff00 }));
  const r = await s.until(isErr(0), 2000);
  const closed = await s.closed(2000);
  const early = r.seen.find(isErr(1));
  if (early) return { ok: false, detail: `a stream error before the EPROTO: ${desc(early)}` };
  if (code(r.hit) !== 'EPROTO') return { ok: false, detail: `want connection error EPROTO, got ${desc(r.hit)}` };
  if (!closed || s.closeCode !== CLOSE.EPROTO) return { ok: false, detail: `EPROTO, then close ${s.closeCode}` };
  return { ok: true, detail: `EPROTO + close ${s.closeCode}, no ETOOBIG: ${r.hit.ext.error.message}` };
});

// ATP-JSON-013: a frame on an alias naming no stream allocates no id, and its ERROR has no
// stream_num; the next alias SYN gets the id it would have had (1 on a fresh session)
probe('json_unknown_alias_allocates_no_id', ['ATP-JSON-013', 'ATP-JSON-016'], async (ctx) => {
  const s = await Session.open(ctx.url, ctx.auth);
  if (s.refused) throw new Error(`handshake refused: HTTP ${s.refused}`);
  s.sendText({ type: 'WINDOW_UPDATE', stream_id: 'ghost', credit: 5 });
  const e = (await s.until((f) => f.text && f.json.stream_id === 'ghost', 2000)).hit?.json;
  if (!e || e.error?.code !== 'EPROTO') { s.end(); return { ok: false, detail: `want EPROTO on "ghost", got ${JSON.stringify(e)}` }; }
  if ('stream_num' in e) { s.end(); return { ok: false, detail: `the ERROR numbers a stream that does not exist: ${JSON.stringify(e)}` }; }
  s.sendText({ stream_id: 'a1', msg_seq: 1, flags: ['SYN'], payload: { type: 'agent.task', content: { prompt: 'x' } } });
  const d = (await s.until((f) => f.text && f.json.stream_id === 'a1', 3000)).hit?.json; s.end();
  if (d?.stream_num !== 1) return { ok: false, detail: `the next alias SYN got ${JSON.stringify(d)}, want stream_num 1` };
  return { ok: true, detail: `no id for "ghost" (${e.error.message}); a1 is stream 1` };
});

// ATP-SESS-008 / ATP-LIMIT-006: every uint is a max_message_size (0 too); an answer that
// does not fit ends the stream with ETOOBIG, nothing of it sent, and the session goes on
probe('max_message_size_0_answer_etoobig', ['ATP-SESS-008', 'ATP-LIMIT-006'], async (ctx) => {
  const s = await fresh(ctx, { max_message_size: 0 });
  s.send(syn(1));
  return streamError(s, 1, 'ETOOBIG');
});

export const PROBES = P;
