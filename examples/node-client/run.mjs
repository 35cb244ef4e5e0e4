#!/usr/bin/env node
// Run the probes against a router: node run.mjs ws://HOST:PORT/ws [--token JWT] [--json]
// [--only NAME,...] [--group auth]. Exit 0 when every probe passed, 1 otherwise, 2 on bad usage.
import { PROBES } from './probes.mjs';
import { Session } from './session.mjs';
import { PROBES as MORE } from './probes_streams.mjs';
import { PROBES as JSONP } from './probes_json.mjs';
import { PROBES as LIMITS } from './probes_limits.mjs';
import { PROBES as BINDING } from './probes_binding.mjs';
import { PROBES as EDGES } from './probes_edges.mjs';
import { PROBES as CLARIFIED } from './probes_clarified.mjs';
import { AUTH_PROBES, DRAIN_PROBES } from './probes_auth.mjs';
import { TLS_PROBES } from './probes_tls.mjs';

const args = process.argv.slice(2);
const opt = (k) => { const i = args.indexOf(k); return i >= 0 ? args[i + 1] : undefined; };
// checked over every binary frame the router sent during all the other probes
const WELL_FORMED = { name: 'router_frames_well_formed', ids: ['ATP-FRAME-002', 'ATP-FRAME-005', 'ATP-FRAME-015', 'ATP-FRAME-018', 'ATP-FRAME-021', 'ATP-FLAG-001', 'ATP-FLAG-008', 'ATP-SEQ-006', 'ATP-STREAM-006'] };
if (args.includes('--list')) {
  const g = (n) => n.map((p) => ({ name: p.name, ids: p.ids }));
  const all = [...g([...PROBES, ...MORE, ...JSONP, ...LIMITS, ...BINDING, ...EDGES, ...CLARIFIED]), WELL_FORMED];
  console.log(JSON.stringify({ open: all, auth: [...g(AUTH_PROBES), WELL_FORMED], drain: g(DRAIN_PROBES), tls: g(TLS_PROBES) }));
  process.exit(0);
}
const url = args.find((a) => /^wss?:\/\//.test(a));
if (!url) { console.error('usage: node run.mjs ws://HOST:PORT/ws [--token JWT] [--json] [--only A,B] [--group auth|drain|tls] [--ca PEM] [--token-silver JWT] [--token-qa JWT] (env ATP_JWT_KEY: the HS256 secret)'); process.exit(2); }
const token = opt('--token');
const only = opt('--only')?.split(',');
const group = opt('--group');
let list = group === 'auth' ? AUTH_PROBES : group === 'drain' ? DRAIN_PROBES : group === 'tls' ? TLS_PROBES : [...PROBES, ...MORE, ...JSONP, ...LIMITS, ...BINDING, ...EDGES, ...CLARIFIED];
if (only) list = list.filter((p) => only.includes(p.name));
const tokens = { silver: opt('--token-silver'), qa: opt('--token-qa') };
const ctx = { url, token, tokens, secret: process.env.ATP_JWT_KEY, ca: opt('--ca'), auth: token ? { token } : {} };
const results = [];
const PAR = Number(opt('--parallel') ?? 4);
const t0 = Date.now();
let next = 0;
async function worker() {
  while (next < list.length) {
    const p = list[next++];
    const t = Date.now();
    let r;
    try { r = await Promise.race([p.fn(ctx), new Promise((_, rej) => setTimeout(() => rej(new Error('probe timeout')), 30000))]); }
    catch (e) { r = { ok: false, detail: `exception: ${e.message}` }; }
    results.push({ name: p.name, ids: p.ids, ok: Boolean(r.ok), detail: r.detail, ms: Date.now() - t });
  }
}
await Promise.all(Array.from({ length: PAR }, worker));
if (!only && group !== 'drain' && group !== 'tls') {
  const v = Session.violations;
  results.push({ name: WELL_FORMED.name, ids: WELL_FORMED.ids, ok: v.length === 0, ms: 0,
    detail: v.length ? `${v.length} violations, first: ${[...new Set(v)].slice(0, 3).join('; ')}` : `${Session.framesChecked} router frames, all well-formed` });
  list.push(WELL_FORMED);
}
results.sort((a, b) => list.findIndex((p) => p.name === a.name) - list.findIndex((p) => p.name === b.name));
if (args.includes('--json')) console.log(JSON.stringify({ url, ms: Date.now() - t0, results }));
else for (const r of results) console.log(`${r.ok ? 'PASS' : 'FAIL'} ${r.name.padEnd(40)} ${r.ms}ms  ${r.detail}`);
process.exit(results.every((r) => r.ok) ? 0 : 1);
