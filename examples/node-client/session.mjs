// An ATP/1 client session over the WebSocket binding (spec §6, §8, §10, §13.1), for probes.
// It answers heartbeats (ATP-TIME-002) and, unless told not to, returns credit for the
// router's DATA once half the advertised initial_window is consumed (ATP-FLOW-012).
import crypto from 'node:crypto';
import { WsClient } from './ws.mjs';
import { frame, parseMessage, T, F } from './frame.mjs';

/** Every wait for the router is this many times longer than a probe asks (a loaded host:
 * a probe that passes never waits its timeout out; ATP_PROBE_SLACK overrides). */
export const SLACK = Number(process.env.ATP_PROBE_SLACK ?? 3);

export class Session {
  static async open(url, { token, tokenIn = 'header', protocols = [], initialWindow = 262144,
    autoCredit = true, timeoutMs = 3000, ca } = {}) {
    const headers = {};
    let u = url;
    const protos = [...protocols];
    if (token && tokenIn === 'header') headers.Authorization = `Bearer ${token}`;
    if (token && tokenIn === 'query') u += (u.includes('?') ? '&' : '?') + `access_token=${encodeURIComponent(token)}`;
    if (token && tokenIn === 'subprotocol') protos.push(`bearer.${token}`);
    const ws = await WsClient.connect(u, { headers, protocols: protos, timeoutMs, ca });
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
    const deadline = Date.now() + timeoutMs * SLACK;
    while (!this.pending.length) {
      const m = await this.ws.next(Math.max(0, deadline - Date.now()));
      if (!m) return null;
      if (m.kind === 'text') {
        let obj; try { obj = JSON.parse(m.data); } catch { obj = { unparsable: m.data }; }
        for (const v of checkRouterText(obj)) Session.violations.push(v);
        this.pending.push({ text: true, json: obj, cost: Buffer.byteLength(m.data) });
        continue;
      }
      this.maxBinary = Math.max(this.maxBinary ?? 0, m.data.length);
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
    for (const v of checkRouterFrame(f)) Session.violations.push(v);
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
    const deadline = Date.now() + timeoutMs * SLACK;
    for (;;) {
      const f = await this.recv(Math.max(0, deadline - Date.now()) / SLACK);
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

  async closed(timeoutMs = 2000) { return this.ws.waitClosed(timeoutMs * SLACK); }
  get closeCode() { return this.ws.closeCode; }
  end() { this.ws.destroy(); }
}

/** Every frame any session received that breaks a rule a router's frames must keep. */
Session.violations = [];
Session.framesChecked = 0;

const RESERVED_KEYS = ['v', 'type', 'stream_id', 'msg_seq', 'frag_seq', 'flags', 'qos', 'ttl', 'payload', 'payload_b64'];

/** What is wrong with one binary frame from a router (spec §3-§5, §4.2, §4.3, §7.3). */
export function checkRouterFrame(f) {
  Session.framesChecked++;
  const bad = [];
  const where = `type ${f.type} stream ${f.stream} flags 0x${f.flags.toString(16)}`;
  const no = (id, what) => bad.push(`${id}: ${what} (${where})`);
  if (f.version !== 1) no('ATP-FRAME-002', `version ${f.version}`);
  if (f.reserved) no('ATP-FRAME-004', 'reserved stream bit set');
  if (f.flags & 0x80) no('ATP-FLAG-001', 'reserved flag bit 0x80 set');
  if (f.type > 4) { no('§18', 'a frame type not in the registry'); return bad; }
  if (f.extError) no('ATP-FRAME-005/006', `ext is not strict CBOR: ${f.extError}`);
  for (const k of RESERVED_KEYS) if (k in f.ext) no('ATP-JSON-015', `reserved key "${k}" in ext`);
  if (f.type !== T.DATA) {
    if (f.msgSeq || f.fragSeq) no('ATP-FRAME-018', `control frame with msg_seq ${f.msgSeq} frag_seq ${f.fragSeq}`);
    if (f.payloadLen) no('§4.3', 'control frame with a payload');
    if (f.qos || f.ttl) no('§4.2', `control frame with qos ${f.qos} ttl ${f.ttl}`);
  }
  if (f.type === T.ERROR) {
    const e = f.ext.error;
    if (!e || typeof e.code !== 'string' || typeof e.message !== 'string') no('ATP-FRAME-015', 'ERROR without text code and message');
    if (f.stream !== 0 && !(f.flags & F.RST)) no('§4.3', 'ERROR on a stream without RST');
    if (e && 'retry_after_ms' in e && !(Number.isInteger(e.retry_after_ms) && e.retry_after_ms >= 0)) no('§4.3', 'retry_after_ms not a uint');
  }
  if (f.type === T.WINDOW_UPDATE) {
    if (f.stream === 0) no('ATP-FRAME-012', 'WINDOW_UPDATE on stream 0');
    if ('window' in f.ext) no('ATP-FRAME-021', 'router sent window');
    const c = f.ext.credit;
    if (!(Number.isInteger(c) && c >= 1 && c <= 0x7fffffff)) no('ATP-FLOW-004', `credit ${c}`);
  }
  if (f.type === T.CAPABILITIES && f.stream !== 0) no('ATP-FRAME-013', 'CAPABILITIES on a stream');
  if (f.type === T.BUDGET_UPDATE && f.stream === 0) no('ATP-FRAME-012', 'BUDGET_UPDATE on stream 0');
  if (f.type === T.DATA) {
    if (f.stream === 0) {
      if (!(f.flags & F.HB)) no('ATP-FRAME-011', 'DATA on stream 0 without HB');
      if (f.payloadLen > 64) no('ATP-TIME-003', `heartbeat of ${f.payloadLen} bytes`);
    } else {
      if (f.flags & F.SYN) no('ATP-STREAM-006', 'router sent SYN');
      if (f.flags & F.HB) no('ATP-FLAG-006', 'HB on a stream');
      if ((f.flags & F.MORE) && (f.flags & F.FIN)) no('ATP-FLAG-008', 'MORE with FIN');
      if ((f.flags & F.FIN) && (f.flags & F.CONT)) no('ATP-SEQ-006', 'FIN with CONT');
      if (f.fragSeq > 0 && f.extLen > 0) no('ATP-SEQ-006', 'ext on a later fragment');
      if (f.qos || f.ttl) no('§4.2', `non-SYN DATA with qos ${f.qos} ttl ${f.ttl}`);
    }
  }
  return bad;
}

const FLAG_NAMES = ['SYN', 'ACK', 'MORE', 'FIN', 'RST', 'HB', 'CONT'];
const TYPE_NAMES = ['DATA', 'WINDOW_UPDATE', 'CAPABILITIES', 'BUDGET_UPDATE', 'ERROR'];

/** What is wrong with one JSON text frame from a router (spec §13.3). */
export function checkRouterText(j) {
  Session.framesChecked++;
  const bad = [];
  const no = (id, what) => bad.push(`${id}: ${what} (text ${JSON.stringify(j).slice(0, 120)})`);
  if (j === null || typeof j !== 'object' || Array.isArray(j)) { no('ATP-WS-002', 'not a JSON object'); return bad; }
  if ((j.v ?? 1) !== 1) no('ATP-FRAME-002', `v ${j.v}`);
  const flags = j.flags ?? [];
  if (!Array.isArray(flags) || flags.some((f) => !FLAG_NAMES.includes(f))) no('ATP-FLAG-001', `flags ${JSON.stringify(flags)}`);
  const type = j.type ?? 'DATA';
  if (!TYPE_NAMES.includes(type)) no('§18', `type ${type}`);
  if ('payload' in j && 'payload_b64' in j) no('ATP-JSON-004', 'both payload and payload_b64');
  for (const k of ['msg_seq', 'frag_seq', 'ttl']) if (k in j && !Number.isInteger(j[k])) no('ATP-JSON-010', `${k} ${j[k]}`);
  if ('qos' in j && !['gold', 'silver', 'bronze'].includes(j.qos)) no('§13.3', `qos ${j.qos}`);
  if (type === 'ERROR' && (typeof j.error?.code !== 'string' || typeof j.error?.message !== 'string')) no('ATP-FRAME-015', 'ERROR without text code and message');
  if (type === 'ERROR' && j.stream_id !== 0 && !flags.includes('RST')) no('§4.3', 'ERROR on a stream without RST');
  if (type === 'DATA' && j.stream_id !== 0 && flags.includes('MORE') && flags.includes('FIN')) no('ATP-FLAG-008', 'MORE with FIN');
  if (type === 'DATA' && j.stream_id !== 0 && flags.includes('SYN')) no('ATP-STREAM-006', 'router sent SYN');
  if (type === 'WINDOW_UPDATE' && 'window' in j) no('ATP-FRAME-021', 'router sent window');
  return bad;
}

/** A SYN frame on `stream` (msg_seq 1 unless given) with the conventional task payload. */
export function syn(stream, { prompt = 'hello', qos = 2, ttl = 0, flags = 0, ext, msgSeq = 1,
  window, meta, payload } = {}) {
  const e = ext ?? { ...(window ? { window } : {}), ...(meta ? { meta } : {}) };
  return frame({ flags: 0x01 | flags, qos, ttl, stream, msgSeq,
    ext: Object.keys(e).length || e instanceof Uint8Array ? e : null,
    payload: payload ?? { type: 'agent.task', content: { prompt } } });
}
