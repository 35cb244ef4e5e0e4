// Probes of the WebSocket handshake and authentication (spec §13.1, §14), of the idle
// timeout (§10) and, as group "drain", of a draining router (§6). Tokens: ctx.token (from
// `atp token issue`), ctx.tokens.{silver,qa}; ctx.secret lets us mint our own HS256 JWTs.
import crypto from 'node:crypto';
import { Session, syn } from './session.mjs';
import { WsClient } from './ws.mjs';
import { frame, T, F } from './frame.mjs';
import { streams, fresh, streamError, connError, checkComplete, code, desc, isErr } from './probes.mjs';

const P = [];
const probe = (name, ids, fn) => P.push({ name, ids, fn });
const b64u = (b) => Buffer.from(b).toString('base64url');
/** An HS256 JWT (RFC 7519) minted here, not by the reference. */
export function mint(secret, claims, { alg = 'HS256', sign = true } = {}) {
  const h = b64u(JSON.stringify({ alg, typ: 'JWT' }));
  const p = b64u(JSON.stringify(claims));
  const sig = sign ? b64u(crypto.createHmac('sha256', secret).update(`${h}.${p}`).digest()) : '';
  return `${h}.${p}.${sig}`;
}
const now = () => Math.floor(Date.now() / 1000);
const hs = (ctx, opts) => WsClient.connect(ctx.url, opts);

probe('no_token_401', ['ATP-SEC-001', 'ATP-WS-006'], async (ctx) => {
  const ws = await hs(ctx);
  const www = ws.headers['www-authenticate'] ?? '';
  return { ok: ws.refused === 401 && /^Bearer\b/.test(www) && /realm="atp"/.test(www), detail: `HTTP ${ws.status}, WWW-Authenticate: ${www}` };
});
probe('wrong_path_404', ['§13.1'], async (ctx) => {
  const ws = await WsClient.connect(ctx.url.replace(/\/ws$/, '/nope'), { headers: { Authorization: `Bearer ${ctx.token}` } });
  return { ok: ws.refused === 404, detail: `HTTP ${ws.status}` };
});
probe('token_header', ['ATP-WS-006'], async (ctx) => {
  const s = await fresh(ctx, {}, { token: ctx.token });
  s.send(syn(1)); const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'served with Authorization: Bearer' };
});
probe('token_query', ['ATP-WS-006'], async (ctx) => {
  const s = await fresh(ctx, {}, { token: ctx.token, tokenIn: 'query' });
  s.send(syn(1)); const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'served with ?access_token=' };
});
probe('token_subprotocol', ['ATP-WS-006', 'ATP-WS-007'], async (ctx) => {
  const a = await Session.open(ctx.url, { token: ctx.token, tokenIn: 'subprotocol' });
  const b = await Session.open(ctx.url, { token: ctx.token, tokenIn: 'subprotocol', protocols: ['atp.v1'] });
  const pa = a.ws.protocol, pb = b.ws.protocol;
  a.end(); b.end();
  return { ok: pa === `bearer.${ctx.token}` && pb === 'atp.v1', detail: `selected: ${pa?.slice(0, 20)}..., with atp.v1 offered: ${pb}` };
});
probe('token_precedence', ['ATP-WS-009'], async (ctx) => {
  // a valid header wins over a bad query token; a bad header loses even with a good query token
  const good = await hs({ url: `${ctx.url}?access_token=garbage` }, { headers: { Authorization: `Bearer ${ctx.token}` } });
  const bad = await hs({ url: `${ctx.url}?access_token=${ctx.token}` }, { headers: { Authorization: 'Bearer garbage' } });
  good.destroy?.(); bad.destroy?.();
  return { ok: good.status === 101 && bad.status === 401, detail: `good header + bad query: ${good.status}; bad header + good query: ${bad.status}` };
});
probe('token_alg_none', ['ATP-SEC-002'], async (ctx) => {
  const t = mint(ctx.secret, { sub: 'x', exp: now() + 300 }, { alg: 'none', sign: false });
  const ws = await hs(ctx, { headers: { Authorization: `Bearer ${t}` } });
  ws.destroy?.();
  return { ok: ws.status === 401, detail: `alg none: HTTP ${ws.status}` };
});
probe('token_expired', ['ATP-SEC-003'], async (ctx) => {
  const t = mint(ctx.secret, { sub: 'x', exp: now() - 3600 });
  const ws = await hs(ctx, { headers: { Authorization: `Bearer ${t}` } });
  ws.destroy?.();
  return { ok: ws.status === 401, detail: `expired an hour ago: HTTP ${ws.status}` };
});
probe('token_not_yet_valid', ['ATP-SEC-003'], async (ctx) => {
  const t = mint(ctx.secret, { sub: 'x', exp: now() + 7200, nbf: now() + 3600 });
  const ws = await hs(ctx, { headers: { Authorization: `Bearer ${t}` } });
  ws.destroy?.();
  return { ok: ws.status === 401, detail: `nbf in an hour: HTTP ${ws.status}` };
});
probe('token_wrong_key', ['ATP-SEC-001'], async (ctx) => {
  const t = mint('another-secret-of-at-least-32-bytes!!', { sub: 'x', exp: now() + 300 });
  const ws = await hs(ctx, { headers: { Authorization: `Bearer ${t}` } });
  ws.destroy?.();
  return { ok: ws.status === 401, detail: `signed with another key: HTTP ${ws.status}` };
});
probe('token_minted_here', ['ATP-SEC-002'], async (ctx) => {
  const t = mint(ctx.secret, { sub: 'indie', exp: now() + 300 });
  const s = await fresh(ctx, {}, { token: t });
  s.send(syn(1)); const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  return { ok: !bad, detail: bad ?? 'an HS256 token minted by node:crypto is accepted' };
});
probe('lane_capped', ['ATP-SEC-004', 'ATP-SEC-015'], async (ctx) => {
  const s = await fresh(ctx, {}, { token: ctx.tokens.silver });
  s.send(syn(1, { qos: 1 }), syn(3, { qos: 3 }));
  const { 1: r1, 3: r3 } = await streams(s, [1, 3]); s.end();
  const bad = checkComplete(r1) ?? checkComplete(r3);
  if (bad) return { ok: false, detail: bad };
  const l1 = r1.frames[0].ext.lane, l3 = r3.frames[0].ext.lane;
  return { ok: l1 === 'silver' && l3 === undefined, detail: `gold SYN under max_qos silver: lane ${l1}; bronze SYN: lane ${l3}` };
});
probe('task_type_refused', ['ATP-SEC-004'], async (ctx) => {
  const s = await fresh(ctx, {}, { token: ctx.tokens.qa });
  s.send(syn(1, { meta: { task_type: 'qa' } }), syn(3, { meta: { task_type: 'code' } }));
  const { 1: r1, 3: r3 } = await streams(s, [1, 3]);
  const bad = checkComplete(r1);
  if (bad) { s.end(); return { ok: false, detail: `qa: ${bad}` }; }
  s.pending.unshift(r3.end);
  return streamError(s, 3, 'ESEC');
});
probe('idle_timeout', ['ATP-TIME-004', 'ATP-TIME-008'], async (ctx) => {
  const s = await fresh(ctx, {}, { token: ctx.token });
  const idle = s.routerCaps.idle_timeout_ms;
  if (!idle || idle > 5000) return { ok: false, detail: `router idle_timeout_ms ${idle}: this probe needs a short one` };
  // heartbeats every idle/8, not waiting for replies, keep the session for twice the timeout
  const tick = setInterval(() => s.send(frame({ flags: F.HB, payload: Uint8Array.of(7) })), Math.floor(idle / 8));
  await new Promise((r) => setTimeout(r, 2 * idle));
  clearInterval(tick);
  const b = await s.barrier(2000);
  if (!b.ok || s.ws.closed) return { ok: false, detail: `closed despite heartbeats (close ${s.closeCode})` };
  const t = Date.now();
  const r = await connError(s, 'ETIMEOUT', idle + 3000);
  return { ...r, detail: `${r.detail} after ${Date.now() - t} ms idle (idle_timeout_ms ${idle})` };
});

probe('idle_timeout_not_with_open_stream', ['ATP-TIME-004'], async (ctx) => {
  // "no open stream and nothing received": a stream held open (no credit) keeps the session
  const s = await fresh(ctx, { initial_window: 1024 }, { token: ctx.token, initialWindow: 1024, autoCredit: false });
  const idle = s.routerCaps.idle_timeout_ms;
  s.send(syn(1, { prompt: 'h'.repeat(6000) }));
  await s.until((f) => f.stream === 1 && f.type === T.DATA, 2000);
  await new Promise((r) => setTimeout(r, 2 * idle));
  const alive = !s.ws.closed && !s.log.some(isErr(0));
  s.send(frame({ type: T.WINDOW_UPDATE, stream: 1, ext: { credit: 1000000 } }));
  const r = await s.stream(1); s.end();
  return { ok: alive && r.end?.type === T.DATA, detail: `silent for ${2 * idle} ms with a stream open: session ${alive ? 'kept' : 'closed'}; stream ${desc(r.end)}`.slice(0, 300) };
});

// ---- drain: run alone, against a router that gets SIGTERM once READY is printed ----------
export const DRAIN_PROBES = [{ name: 'session_limit_503', ids: ['ATP-LIMIT-003'], fn: async (ctx) => {
  // the drain router runs with --max-sessions 3
  const held = [];
  for (let i = 0; i < 3; i++) held.push(await fresh(ctx, {}, { token: ctx.token }));
  const ws = await WsClient.connect(ctx.url, { headers: { Authorization: `Bearer ${ctx.token}` } });
  for (const h of held) h.ws.close(1000);
  for (const h of held) await h.closed(2000);
  await new Promise((r) => setTimeout(r, 200));
  const again = await WsClient.connect(ctx.url, { headers: { Authorization: `Bearer ${ctx.token}` } });
  again.destroy();
  const ra = ws.headers?.['retry-after'];
  return { ok: ws.refused === 503 && /^\d+$/.test(ra ?? '') && again.status === 101,
    detail: `4th session: HTTP ${ws.status} Retry-After ${ra}; after 3 closed: HTTP ${again.status}` };
} }, { name: 'drain', ids: ['ATP-SESS-005', 'ATP-SESS-006', 'ATP-SESS-013', 'ATP-ERR-004'], fn: async (ctx) => {
  const idle = await fresh(ctx, {}, { token: ctx.token });
  const s = await fresh(ctx, { initial_window: 1024 }, { token: ctx.token, initialWindow: 1024, autoCredit: false });
  s.send(syn(1, { prompt: 'd'.repeat(6000) }));
  await s.until((f) => f.stream === 1 && f.type === T.DATA, 2000);
  console.log('READY');
  const ann = await s.until(isErr(0), 5000);
  if (code(ann.hit) !== 'EDRAINING') return { ok: false, detail: `want EDRAINING on stream 0, got ${desc(ann.hit)}` };
  if (!Number.isInteger(ann.hit.ext.error.retry_after_ms)) return { ok: false, detail: 'EDRAINING without retry_after_ms' };
  // the session with no stream closes at once (ATP-SESS-013)
  const idleErr = await idle.until(isErr(0), 2000);
  const idleClosed = await idle.closed(2000);
  if (code(idleErr.hit) !== 'EDRAINING' || !idleClosed || idle.closeCode !== 1001) {
    return { ok: false, detail: `idle session: ${desc(idleErr.hit)}, closed ${idleClosed} code ${idle.closeCode}` };
  }
  // a SYN is refused (we MUST NOT open new streams, ATP-SESS-006: this one is the probe of the router)
  s.send(syn(3));
  const ref = await s.until(isErr(3), 2000);
  if (code(ref.hit) !== 'EDRAINING' || !Number.isInteger(ref.hit.ext.error.retry_after_ms)) return { ok: false, detail: `SYN while draining: ${desc(ref.hit)}` };
  // the open stream may finish
  s.send(frame({ type: T.WINDOW_UPDATE, stream: 1, ext: { credit: 1000000 } }));
  const r = await s.stream(1, 3000);
  const bad = checkComplete({ frames: s.log.filter((f) => !f.text && f.stream === 1), end: r.end });
  if (bad) return { ok: false, detail: `open stream during drain: ${bad}` };
  const last = await s.until(isErr(0), 3000);
  const closed = await s.closed(3000);
  return { ok: code(last.hit) === 'EDRAINING' && closed && s.closeCode === 1001,
    detail: `announced, idle session closed 1001, SYN refused, open stream finished, then ${desc(last.hit)} close ${s.closeCode}` };
} }];

export const AUTH_PROBES = P;
