// An ATP/1 client session over the WebSocket binding (spec §6, §8, §10, §13.1), for probes.
// It answers heartbeats (ATP-TIME-002) and, unless told not to, returns credit for the
// router's DATA once half the advertised initial_window is consumed (ATP-FLOW-012).
import crypto from 'node:crypto';
import { WsClient } from './ws.mjs';
import { frame, parseMessage, T, F } from './frame.mjs';

export class Session {
  static async open(url, { token, tokenIn = 'header', protocols = [], initialWindow = 262144,
    autoCredit = true, timeoutMs = 3000 } = {}) {
    const headers = {};
    let u = url;
    const protos = [...protocols];
    if (token && tokenIn === 'header') headers.Authorization = `Bearer ${token}`;
    if (token && tokenIn === 'query') u += (u.includes('?') ? '&' : '?') + `access_token=${encodeURIComponent(token)}`;
    if (token && tokenIn === 'subprotocol') protos.push(`bearer.${token}`);
    const ws = await WsClient.connect(u, { headers, protocols: protos, timeoutMs });
    return new Session(ws, { initialWindow, autoCredit });
  }

  constructor(ws, { initialWindow, autoCredit }) {
    this.ws = ws;
    this.W = initialWindow; // our receive window per stream, as advertised (or the default)
    this.autoCredit = autoCredit;
    this.unreturned = new Map(); // stream -> bytes consumed, not yet returned
    this.pending = [];
    this.log = []; // every frame received, in order
    this.badMessage = null;
  }

  get refused() { return this.ws.refused; }

  send(...frames) { this.ws.sendBinary(Buffer.concat(frames.map((f) => Buffer.from(f)))); }
  sendText(obj) { this.ws.sendText(typeof obj === 'string' ? obj : JSON.stringify(obj)); }

  caps(caps = {}) {
    return frame({ type: T.CAPABILITIES, ext: { caps: { versions: [1], ...caps } } });
  }

  /** Next frame (binary frames are objects from parseMessage; text ones {json, text}). */
  async recv(timeoutMs = 2000) {
    const deadline = Date.now() + timeoutMs;
    while (!this.pending.length) {
      const m = await this.ws.next(Math.max(0, deadline - Date.now()));
      if (!m) return null;
      if (m.kind === 'text') {
        let obj; try { obj = JSON.parse(m.data); } catch { obj = { unparsable: m.data }; }
        this.pending.push({ text: true, json: obj, cost: Buffer.byteLength(m.data) });
        continue;
      }
      let frs;
      try { frs = parseMessage(m.data); } catch (e) { this.badMessage = String(e.message); continue; }
      for (const f of frs) this._onFrame(f);
      this.pending.push(...frs);
    }
    const f = this.pending.shift();
    this.log.push(f);
    return f;
  }

  _onFrame(f) {
    if (f.stream === 0 && f.type === T.DATA && (f.flags & F.HB) && !(f.flags & F.ACK)) {
      this.send(frame({ flags: F.HB | F.ACK, payload: Uint8Array.from(f.payload) }));
    }
    if (f.stream !== 0 && f.type === T.DATA && this.autoCredit) this.consumed(f.stream, f.cost);
  }

  /** Count bytes consumed on a stream and return credit at ⌈W/2⌉ (ATP-FLOW-012). */
  consumed(stream, n) {
    const u = (this.unreturned.get(stream) ?? 0) + n;
    if (u >= Math.ceil(this.W / 2)) {
      this.unreturned.set(stream, 0);
      this.send(frame({ type: T.WINDOW_UPDATE, stream, ext: { credit: u } }));
    } else this.unreturned.set(stream, u);
  }

  /** Frames until `pred` matches one (returned last), or until timeout / close. */
  async until(pred, timeoutMs = 2000) {
    const seen = [];
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const f = await this.recv(Math.max(0, deadline - Date.now()));
      if (!f) return { seen, hit: null };
      seen.push(f);
      if (pred(f)) return { seen, hit: f };
    }
  }

  /** All frames of `stream` until its end (FIN, ERROR or RST). */
  async stream(stream, timeoutMs = 3000) {
    const r = await this.until((f) => !f.text && f.stream === stream &&
      (f.type === T.ERROR || (f.type === T.DATA && (f.flags & (F.FIN | F.RST)))), timeoutMs);
    return { frames: r.seen.filter((f) => !f.text && f.stream === stream), end: r.hit, all: r.seen };
  }

  /** Send a heartbeat and read until its reply: what the router sent before it. */
  async barrier(timeoutMs = 2000) {
    const tag = crypto.randomBytes(8);
    this.send(frame({ flags: F.HB, payload: tag }));
    const r = await this.until((f) => !f.text && f.stream === 0 && f.type === T.DATA &&
      (f.flags & F.HB) && (f.flags & F.ACK) && Buffer.compare(Buffer.from(f.payload), tag) === 0, timeoutMs);
    return { before: r.seen.slice(0, r.hit ? -1 : undefined), ok: r.hit != null };
  }

  async closed(timeoutMs = 2000) { return this.ws.waitClosed(timeoutMs); }
  get closeCode() { return this.ws.closeCode; }
  end() { this.ws.destroy(); }
}

/** A SYN frame on `stream` (msg_seq 1 unless given) with the conventional task payload. */
export function syn(stream, { prompt = 'hello', qos = 2, ttl = 0, flags = 0, ext, msgSeq = 1,
  window, meta, payload } = {}) {
  const e = ext ?? { ...(window ? { window } : {}), ...(meta ? { meta } : {}) };
  return frame({ flags: 0x01 | flags, qos, ttl, stream, msgSeq,
    ext: Object.keys(e).length || e instanceof Uint8Array ? e : null,
    payload: payload ?? { type: 'agent.task', content: { prompt } } });
}
