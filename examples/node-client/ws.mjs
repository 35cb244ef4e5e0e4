// A minimal RFC 6455 WebSocket client on node:net, so that probes control every byte
// (messages that end inside an ATP frame, oversized messages, close codes) and read the
// HTTP refusal of a handshake (401/403/404/503) as it is sent.
import net from 'node:net';
import tls from 'node:tls';
import fs from 'node:fs';
import crypto from 'node:crypto';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export class WsClient {
  /** @returns {Promise<WsClient>} resolves after the 101 (or with .refused set to the status). */
  static connect(url, { headers = {}, protocols = [], timeoutMs = 3000, ca } = {}) {
    const u = new URL(url);
    return new Promise((resolve, reject) => {
      // wss://: the certificate chain and host name are verified (ATP-WS-013); `ca` (a PEM
      // file) replaces the system's trust store; ALPN http/1.1 (§13.1)
      const host = u.hostname.replace(/^\[|\]$/g, '');
      const sock = u.protocol === 'wss:'
        ? tls.connect({ host, port: Number(u.port || 443), servername: net.isIP(host) ? undefined : host,
          ca: ca ? fs.readFileSync(ca) : undefined, ALPNProtocols: ['http/1.1'], minVersion: 'TLSv1.2' })
        : net.connect(Number(u.port || 80), host);
      const ready = u.protocol === 'wss:' ? 'secureConnect' : 'connect';
      const ws = new WsClient(sock);
      const key = crypto.randomBytes(16).toString('base64');
      const timer = setTimeout(() => { sock.destroy(); reject(new Error('handshake timeout')); }, timeoutMs);
      let hbuf = Buffer.alloc(0);
      const onData = (d) => {
        hbuf = Buffer.concat([hbuf, d]);
        const end = hbuf.indexOf('\r\n\r\n');
        if (end < 0) return;
        sock.off('data', onData);
        clearTimeout(timer);
        const lines = hbuf.subarray(0, end).toString('latin1').split('\r\n');
        ws.status = Number(lines[0].split(' ')[1]);
        ws.headers = {};
        for (const l of lines.slice(1)) {
          const i = l.indexOf(':');
          ws.headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
        }
        const rest = hbuf.subarray(end + 4);
        if (ws.status !== 101) { ws.refused = ws.status; ws.body = rest.toString(); sock.destroy(); resolve(ws); return; }
        const want = crypto.createHash('sha1').update(key + GUID).digest('base64');
        if (ws.headers['sec-websocket-accept'] !== want) { sock.destroy(); reject(new Error('bad Sec-WebSocket-Accept')); return; }
        ws.protocol = ws.headers['sec-websocket-protocol'] ?? null;
        sock.on('data', (x) => ws._feed(x));
        if (rest.length) ws._feed(rest);
        resolve(ws);
      };
      sock.on('data', onData);
      sock.on('error', (e) => { clearTimeout(timer); ws._end(e); reject(e); });
      sock.on('close', () => ws._end());
      sock.on(ready, () => {
        const hs = [`GET ${u.pathname}${u.search} HTTP/1.1`, `Host: ${u.host}`, 'Upgrade: websocket',
          'Connection: Upgrade', `Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13'];
        if (protocols.length) hs.push(`Sec-WebSocket-Protocol: ${protocols.join(', ')}`);
        for (const [k, v] of Object.entries(headers)) hs.push(`${k}: ${v}`);
        sock.write(hs.join('\r\n') + '\r\n\r\n');
      });
    });
  }

  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.frag = null; // [opcode, chunks] of a fragmented message
    this.queue = []; // {kind: 'binary'|'text', data}
    this.waiters = [];
    this.closeCode = null; // the code of the peer's close frame
    this.closed = false;
    this.sock.on?.('error', () => {});
  }

  _end() {
    if (this.closed) return;
    this.closed = true;
    this._wake();
  }

  _wake() { const w = this.waiters; this.waiters = []; for (const f of w) f(); }

  _feed(d) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    for (;;) {
      const b = this.buf;
      if (b.length < 2) return;
      const fin = (b[0] & 0x80) !== 0, op = b[0] & 0x0f;
      let len = b[1] & 0x7f, off = 2;
      if (len === 126) { if (b.length < 4) return; len = b.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (b.length < 10) return; len = Number(b.readBigUInt64BE(2)); off = 10; }
      if (b[1] & 0x80) off += 4; // servers must not mask; tolerate
      if (b.length < off + len) return;
      const data = b.subarray(off, off + len);
      this.buf = b.subarray(off + len);
      if (op === 0x8) {
        this.closeCode = data.length >= 2 ? data.readUInt16BE(0) : 1005;
        this.closeReason = data.subarray(2).toString();
        if (!this.closeSent) this._send(0x8, data.subarray(0, 2));
        this.sock.end();
        this._end();
        return;
      }
      if (op === 0x9) { this._send(0xa, data); continue; }
      if (op === 0xa) { this.pongs = (this.pongs ?? []).concat([Buffer.from(data)]); this._wake(); continue; }
      if (op === 0x0) { if (this.frag) this.frag[1].push(Buffer.from(data)); }
      else this.frag = [op, [Buffer.from(data)]];
      if (fin && this.frag) {
        const [o, chunks] = this.frag; this.frag = null;
        const all = Buffer.concat(chunks);
        this.queue.push(o === 0x1 ? { kind: 'text', data: all.toString('utf8') } : { kind: 'binary', data: all });
        this._wake();
      }
    }
  }

  _send(op, payload, fin = true) {
    if (this.sock.destroyed) return;
    const p = Buffer.from(payload);
    const mask = crypto.randomBytes(4);
    let h;
    if (p.length < 126) { h = Buffer.from([(fin ? 0x80 : 0) | op, 0x80 | p.length]); }
    else if (p.length < 65536) { h = Buffer.alloc(4); h[0] = (fin ? 0x80 : 0) | op; h[1] = 0x80 | 126; h.writeUInt16BE(p.length, 2); }
    else { h = Buffer.alloc(10); h[0] = (fin ? 0x80 : 0) | op; h[1] = 0x80 | 127; h.writeBigUInt64BE(BigInt(p.length), 2); }
    for (let i = 0; i < p.length; i++) p[i] ^= mask[i & 3];
    this.sock.write(Buffer.concat([h, mask, p]));
  }

  sendBinary(buf) { this._send(0x2, buf); }
  ping(data) { this._send(0x9, data); }
  sendText(s) { this._send(0x1, Buffer.from(s, 'utf8')); }
  close(code = 1000) { const b = Buffer.alloc(2); b.writeUInt16BE(code); this.closeSent = true; this._send(0x8, b); }
  destroy() { this.sock.destroy(); }

  /** Next message, or null on close / timeout. */
  async next(timeoutMs = 2000) {
    const deadline = Date.now() + timeoutMs;
    while (!this.queue.length) {
      if (this.closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise((r) => { const t = setTimeout(r, left); this.waiters.push(() => { clearTimeout(t); r(); }); });
    }
    return this.queue.shift();
  }

  /** Resolves once the transport has closed (true) or the timeout passed (false). */
  async waitClosed(timeoutMs = 2000) {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise((r) => { const t = setTimeout(r, left); this.waiters.push(() => { clearTimeout(t); r(); }); });
    }
    return true;
  }
}
