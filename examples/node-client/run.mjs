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
import { catchAll, parseArgs, readInput, usageError } from './cli.mjs';

const PROG = 'run.mjs';
catchAll(PROG);
const usage = 'usage: node run.mjs ws://HOST:PORT/ws [--token JWT] [--json] [--only A,B] [--group auth|drain|tls] [--ca PEM] [--token-silver JWT] [--token-qa JWT] [--parallel N] | node run.mjs --list\n'
  + '(env ATP_JWT_KEY: the HS256 secret) Exit 0: every probe passed; 1: one failed; 2: bad usage.';
const { url, opts } = parseArgs(PROG, process.argv.slice(2), {
  valued: ['--token', '--only', '--group', '--ca', '--token-silver', '--token-qa', '--parallel'],
  flags: ['--json', '--list'], usage, urlOptional: true,
});
const opt = (k) => opts[k];
// checked over every binary frame the router sent during all the other probes
const WELL_FORMED = { name: 'router_frames_well_formed', ids: ['ATP-FRAME-002', 'ATP-FRAME-005', 'ATP-FRAME-015', 'ATP-FRAME-018', 'ATP-FRAME-021', 'ATP-FLAG-001', 'ATP-FLAG-008', 'ATP-SEQ-006', 'ATP-STREAM-006'] };
if (opts['--list']) {
  const g = (n) => n.map((p) => ({ name: p.name, ids: p.ids }));
  const all = [...g([...PROBES, ...MORE, ...JSONP, ...LIMITS, ...BINDING, ...EDGES, ...CLARIFIED]), WELL_FORMED];
  console.log(JSON.stringify({ open: all, auth: [...g(AUTH_PROBES), WELL_FORMED], drain: g(DRAIN_PROBES), tls: g(TLS_PROBES) }));
  process.exit(0);
}
if (!url) usageError(PROG, 'a ws:// or wss:// URL is needed (or --list)');
const token = opt('--token');
const only = opt('--only')?.split(',');
const group = opt('--group');
const GROUPS = { auth: AUTH_PROBES, drain: DRAIN_PROBES, tls: TLS_PROBES };
if (group !== undefined && !Object.hasOwn(GROUPS, group)) usageError(PROG, `--group ${group}: one of ${Object.keys(GROUPS).join(', ')}`);
let list = group !== undefined ? GROUPS[group] : [...PROBES, ...MORE, ...JSONP, ...LIMITS, ...BINDING, ...EDGES, ...CLARIFIED];
if (only) {
  const unknown = only.filter((n) => !list.some((p) => p.name === n));
  if (unknown.length) usageError(PROG, `--only ${unknown.join(',')}: no such probe in ${group ? `the ${group} group` : 'the default group'}; node run.mjs --list names them`);
  list = list.filter((p) => only.includes(p.name));
}
if (opt('--ca')) readInput(PROG, '--ca', opt('--ca'));
const tokens = { silver: opt('--token-silver'), qa: opt('--token-qa') };
const ctx = { url, token, tokens, secret: process.env.ATP_JWT_KEY, ca: opt('--ca'), auth: token ? { token } : {} };
const results = [];
const PAR = Number(opt('--parallel') ?? 4);
if (!Number.isInteger(PAR) || PAR < 1) usageError(PROG, `--parallel ${opt('--parallel')}: a whole number, 1 or more`);
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
if (opts['--json']) console.log(JSON.stringify({ url, ms: Date.now() - t0, results }));
else for (const r of results) console.log(`${r.ok ? 'PASS' : 'FAIL'} ${r.name.padEnd(40)} ${r.ms}ms  ${r.detail}`);
process.exit(results.every((r) => r.ok) ? 0 : 1);
