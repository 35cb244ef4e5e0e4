// Probes of wss:// (§13.1): a router started with a certificate (`atp serve --dev-cert`);
// ctx.ca is the certificate's file.
import tls from 'node:tls';
import fs from 'node:fs';
import { Session, syn } from './session.mjs';
import { WsClient } from './ws.mjs';
import { checkComplete, fresh } from './probes.mjs';

const P = [];
const probe = (name, ids, fn) => P.push({ name, ids, fn });
const hostPort = (url) => { const u = new URL(url); return { host: u.hostname, port: Number(u.port) }; };

probe('tls_stream_alpn_version', ['§13.1 wss', 'ATP-WS-013'], async (ctx) => {
  const s = await fresh(ctx, {}, { ca: ctx.ca });
  const alpn = s.ws.sock.alpnProtocol, version = s.ws.sock.getProtocol();
  s.send(syn(1)); const r = await s.stream(1); s.end();
  const bad = checkComplete(r);
  return { ok: !bad && alpn === 'http/1.1' && ['TLSv1.2', 'TLSv1.3'].includes(version), detail: bad ?? `ALPN ${alpn}, ${version}, stream served` };
});
probe('tls_untrusted_refused_by_us', ['ATP-WS-013'], async (ctx) => {
  try {
    const ws = await WsClient.connect(ctx.url, {});
    ws.destroy?.();
    return { ok: false, detail: `connected without trusting the certificate (HTTP ${ws.status})` };
  } catch (e) {
    return { ok: /self.signed|certificate|verify/i.test(e.message), detail: `refused: ${e.message}` };
  }
});
probe('tls_1_1_refused', ['§13.1 wss (TLS 1.2 or newer)'], async (ctx) => {
  const { host, port } = hostPort(ctx.url);
  return new Promise((resolve) => {
    const sock = tls.connect({ host, port, ca: fs.readFileSync(ctx.ca), minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' });
    sock.on('secureConnect', () => { const v = sock.getProtocol(); sock.destroy(); resolve({ ok: false, detail: `the router accepted ${v}` }); });
    sock.on('error', (e) => resolve({ ok: true, detail: `TLS 1.1 handshake failed: ${e.code ?? e.message}` }));
  });
});
probe('tls_plain_ws_refused', ['§13.1 wss'], async (ctx) => {
  try {
    const ws = await WsClient.connect(ctx.url.replace(/^wss:/, 'ws:'), { timeoutMs: 1000 });
    ws.destroy?.();
    return { ok: ws.status !== 101, detail: `plain ws:// on the TLS port: HTTP ${ws.status}` };
  } catch (e) {
    return { ok: true, detail: `plain ws:// on the TLS port: ${e.message}` };
  }
});

export const TLS_PROBES = P;
