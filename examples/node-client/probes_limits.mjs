// Probes of budget windows, meta, the client's advertised limits and payload handling.
import { Session, syn, SLACK } from './session.mjs';
import { frame, T, F, decodePayload } from './frame.mjs';
import { streams, fresh, streamError, checkComplete, code, desc, isErr } from './probes.mjs';

const P = [];
const probe = (name, ids, fn) => P.push({ name, ids, fn });

probe('budget_too_small', ['ATP-BUDGET-002'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { window: { max_tokens: 1 } }));
  return streamError(s, 1, 'EBUDGET');
});
probe('budget_window_not_map', ['ATP-BUDGET-008'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { ext: { window: [1, 2] } }));
  return streamError(s, 1, 'EPROTO');
});
probe('budget_window_negative', ['ATP-BUDGET-008'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { window: { max_usd_micros: -1 } }));
  return streamError(s, 1, 'EPROTO');
});
probe('budget_window_float', ['ATP-BUDGET-008'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { window: { max_tokens: 1000.5 } }));
  return streamError(s, 1, 'EPROTO');
});
probe('budget_lowered_mid_flight', ['ATP-BUDGET-005'], async (ctx) => {
  const s = await fresh(ctx, { initial_window: 1024 }, { initialWindow: 1024, autoCredit: false });
  s.send(syn(1, { prompt: 'b'.repeat(6000), window: { max_tokens: 100000 } }));
  await s.until((f) => f.stream === 1 && f.type === T.DATA, 2000);
  s.send(frame({ type: T.WINDOW_UPDATE, stream: 1, ext: { window: { max_tokens: 1 } } }));
  return streamError(s, 1, 'EBUDGET');
});
probe('meta_fanout_17', ['§12 meta.fanout'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { meta: { fanout: 17 } }));
  return streamError(s, 1, 'EPROTO');
});
probe('meta_unknown_strategy', ['ATP-STRAT-009'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { meta: { strategy: 'coin_toss' } }));
  return streamError(s, 1, 'EPROTO');
});
probe('meta_tool_permissions_not_list', ['ATP-SEC-016'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { meta: { tool_permissions: 'all' } }));
  return streamError(s, 1, 'EPROTO');
});
probe('session_id_not_text', ['ATP-EXT-010'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1, { ext: { session_id: 42 } }));
  return streamError(s, 1, 'EPROTO');
});
probe('client_max_frame_size', ['ATP-SESS-007', 'ATP-SEQ-008'], async (ctx) => {
  const s = await fresh(ctx, { max_frame_size: 1024 });
  const text = 'f'.repeat(5000);
  s.send(syn(1, { prompt: text }));
  const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  if (bad) return { ok: false, detail: bad };
  const big = r.frames.find((f) => f.extLen + f.payloadLen > 1024);
  return { ok: !big, detail: big ? `router sent a frame body of ${big.extLen + big.payloadLen} > 1024` : `${r.frames.length} frames, each body <= 1024` };
});
probe('client_max_message_size', ['ATP-LIMIT-004'], async (ctx) => {
  const s = await fresh(ctx, { max_message_size: 2048 });
  s.send(syn(1, { prompt: 'm'.repeat(6000) }));
  const r = await s.stream(1); s.end();
  let cur = 0, worst = 0;
  for (const f of r.frames.filter((x) => x.type === T.DATA)) { cur += f.payloadLen; worst = Math.max(worst, cur); if (!(f.flags & F.CONT)) cur = 0; }
  const endOk = r.end != null && (r.end.type !== T.ERROR || code(r.end) === 'ETOOBIG');
  return { ok: worst <= 2048 && endOk, detail: `largest message ${worst} bytes; end: ${desc(r.end)}` };
});
probe('client_tiny_window_final', ['ATP-FLOW-014'], async (ctx) => {
  const s = await fresh(ctx, { initial_window: 64 }, { initialWindow: 64 });
  s.send(syn(1));
  const r = await s.stream(1, 3000); s.end();
  const over = r.frames.find((f) => f.type === T.DATA && 24 + f.extLen > 32 && f.fragSeq === 0);
  return { ok: r.end != null && !over, detail: over ? `first fragment with fixed cost ${24 + over.extLen} > W/2` : `end: ${desc(r.end)}` };
});
probe('syn_payload_not_cbor', ['ATP-FRAME-008'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(frame({ flags: F.SYN, stream: 1, msgSeq: 1, qos: 2, payload: Buffer.from('plain text, not CBOR') }));
  const r = await s.stream(1); const b = await s.barrier(); s.end();
  return { ok: r.end != null && b.ok, detail: `router: ${desc(r.end)}` };
});
probe('syn_payload_with_tag', ['ATP-FRAME-006', 'ATP-FRAME-008'], async (ctx) => {
  const s = await fresh(ctx);
  // {"type": "agent.task", "content": 1("x")}: a tag in the payload, not the ext
  const p = Buffer.concat([Buffer.from([0xa2, 0x64]), Buffer.from('type'), Buffer.from([0x6a]), Buffer.from('agent.task'),
    Buffer.from([0x67]), Buffer.from('content'), Buffer.from([0xc1, 0x61, 0x78])]);
  s.send(frame({ flags: F.SYN, stream: 1, msgSeq: 1, qos: 2, payload: p }));
  const r = await s.stream(1); const b = await s.barrier(); s.end();
  return { ok: r.end != null && b.ok, detail: `router: ${desc(r.end)}` };
});
probe('unknown_error_code_from_client', ['ATP-ERR-003'], async (ctx) => {
  const s = await fresh(ctx, { initial_window: 1024 }, { initialWindow: 1024, autoCredit: false });
  s.send(syn(1, { prompt: 'u'.repeat(6000) }));
  await s.until((f) => f.stream === 1 && f.type === T.DATA, 2000);
  await new Promise((r) => setTimeout(r, 50));
  await s.barrier();
  s.send(frame({ type: T.ERROR, stream: 1, ext: { error: { code: 'EX_NEW', message: 'no RST flag set' } } }),
    frame({ type: T.WINDOW_UPDATE, stream: 1, ext: { credit: 1000000 } }));
  const b = await s.barrier(); await new Promise((r) => setTimeout(r, 150)); const b2 = await s.barrier(); s.end();
  const after = [...b.before, ...b2.before].filter((f) => f.stream === 1);
  return { ok: b2.ok && after.length === 0, detail: after.length ? `stream went on: ${desc(after[0])}` : 'ERROR without RST ended the stream' };
});
probe('window_update_after_close', ['ATP-FLAG-004'], async (ctx) => {
  const s = await fresh(ctx);
  s.send(syn(1)); await s.stream(1);
  s.send(frame({ type: T.WINDOW_UPDATE, stream: 1, ext: { credit: 5 } }), frame({ stream: 1, msgSeq: 2, flags: F.RST }),
    frame({ stream: 1, msgSeq: 9, payload: Uint8Array.of(1) }));
  const b = await s.barrier(); s.end();
  const errs = b.before.filter((f) => f.type === T.ERROR);
  return { ok: b.ok && errs.length === 0, detail: errs.length ? `errors: ${desc(errs[0])}` : 'frames on a closed stream discarded' };
});
probe('too_many_fragments', ['ATP-SEQ-013'], async (ctx) => {
  const s = await fresh(ctx);
  let credit = s.routerCaps.initial_window ?? 262144, frag = 0;
  const deadline = Date.now() + 7000 * SLACK;
  while (frag <= 65535 && Date.now() < deadline) {
    const batch = [];
    while (credit >= 25 && frag <= 65535 && batch.length < 20000) {
      batch.push(frame({ flags: (frag === 0 ? F.SYN : 0) | F.CONT, stream: 1, msgSeq: 1, fragSeq: frag, payload: Uint8Array.of(0) }));
      credit -= 25; frag++;
    }
    if (batch.length) s.send(...batch);
    if (frag > 65535) break;
    const f = await s.recv(3000);
    if (!f) return { ok: false, detail: `stalled at fragment ${frag}` };
    if (f.type === T.WINDOW_UPDATE) credit += f.ext.credit;
    if (f.type === T.ERROR) { s.pending.unshift(f); break; }
  }
  return streamError(s, 1, 'ETOOBIG', 4000);
});

export const PROBES = P;
