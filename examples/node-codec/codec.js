#!/usr/bin/env node
// An ATP v1 frame codec in JavaScript, node's standard library only: the codec testee of
// the conformance suite (conformance/README.md, "The codec protocol"). One JSON request per
// line on stdin, one JSON reply per line on stdout:
//   {"op":"hello"}                      -> {"ok":true,"name":"node-codec","claims":["L1"]}
//   {"op":"decode","hex":"..."}         -> {"ok":true,"frames":[...]} | {"ok":false,"error","scope"}
//   {"op":"encode","frame":{...}}       -> {"ok":true,"hex":"..."}
// Spec: spec/atp-v1.md sections 3 (header), 4 (types, ext), 5 (flags), 12 (limits), 13.3 (JSON).
"use strict";
const readline = require("readline");

const TYPES = ["DATA", "WINDOW_UPDATE", "CAPABILITIES", "BUDGET_UPDATE", "ERROR"];
const FLAGS = [["SYN", 1], ["ACK", 2], ["MORE", 4], ["FIN", 8], ["RST", 16], ["HB", 32], ["CONT", 64]];
const QOS = ["unspecified", "gold", "silver", "bronze"];
const HEADER_KEYS = new Set(["v", "type", "stream_id", "msg_seq", "frag_seq", "flags", "qos", "ttl", "payload", "payload_b64"]);
const MAX_FRAME = 1048576, MAX_EXT = 65536, MAX_DEPTH = 16, MAX_HB = 64, MAX_WINDOW = 2147483647;

class AtpError extends Error {
  constructor(code, message, stream) { super(message); this.code = code; this.stream = stream; }
}

// ---- strict CBOR (RFC 8949): definite lengths, text keys, no tags, no duplicates, finite floats
function cborDecode(buf, strict, depthLimit) {
  let pos = 0;
  const fail = (why) => { throw new Error(why); };
  function need(n) { if (pos + n > buf.length) fail("truncated CBOR"); }
  function arg(info) {
    if (info < 24) return info;
    const sizes = { 24: 1, 25: 2, 26: 4, 27: 8 };
    const n = sizes[info];
    if (n === undefined) fail(info === 31 ? "indefinite length" : "reserved additional info");
    need(n);
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(buf[pos + i]);
    pos += n;
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }
  function item(depth) {
    if (depth > depthLimit) fail("nesting too deep");
    need(1);
    const ib = buf[pos++], major = ib >> 5, info = ib & 31;
    if (major === 7) {
      if (info === 20) return false;
      if (info === 21) return true;
      if (info === 22) return null;
      if (info === 23) { if (strict) fail("undefined"); return null; }
      if (info === 25 || info === 26 || info === 27) {
        const n = { 25: 2, 26: 4, 27: 8 }[info]; need(n);
        const dv = new DataView(buf.buffer, buf.byteOffset + pos, n); pos += n;
        const f = n === 2 ? half(dv.getUint16(0)) : n === 4 ? dv.getFloat32(0) : dv.getFloat64(0);
        if (!Number.isFinite(f)) fail("NaN or infinite float");
        return f;
      }
      fail("simple value");
    }
    if (info === 31) fail("indefinite length");
    const n = arg(info);
    switch (major) {
      case 0: return n;
      case 1: return typeof n === "bigint" ? -1n - n : -1 - n;
      case 2: { need(Number(n)); const b = buf.subarray(pos, pos + Number(n)); pos += Number(n); return Buffer.from(b); }
      case 3: {
        need(Number(n)); const b = buf.subarray(pos, pos + Number(n)); pos += Number(n);
        try { return new TextDecoder("utf-8", { fatal: true }).decode(b); } catch (e) { fail("text is not UTF-8"); }
      }
      case 4: { const a = []; for (let i = 0; i < n; i++) a.push(item(depth + 1)); return a; }
      case 5: {
        const m = {}; const seen = new Set();
        for (let i = 0; i < n; i++) {
          const k = item(depth + 1);
          if (typeof k !== "string") fail("a map key that is not text");
          if (seen.has(k)) fail("duplicate key"); seen.add(k);
          m[k] = item(depth + 1);
        }
        return m;
      }
      case 6: fail("a CBOR tag");
    }
    fail("bad major type");
  }
  const v = item(1);  // the top item is at depth 1 (spec §12: the ext map counts)
  if (pos !== buf.length) fail("trailing bytes");
  return v;
}
function half(h) {
  const e = (h >> 10) & 31, f = h & 1023, s = h >> 15 ? -1 : 1;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}
function cborEncode(v) {
  const out = [];
  function head(major, n) {
    n = BigInt(n);
    if (n < 24n) out.push((major << 5) | Number(n));
    else if (n < 256n) out.push((major << 5) | 24, Number(n));
    else if (n < 65536n) out.push((major << 5) | 25, Number(n >> 8n), Number(n & 255n));
    else if (n < 4294967296n) { out.push((major << 5) | 26); for (let i = 3; i >= 0; i--) out.push(Number((n >> BigInt(8 * i)) & 255n)); }
    else { out.push((major << 5) | 27); for (let i = 7; i >= 0; i--) out.push(Number((n >> BigInt(8 * i)) & 255n)); }
  }
  function enc(x) {
    if (x === null) out.push(0xf6);
    else if (x === false) out.push(0xf4);
    else if (x === true) out.push(0xf5);
    else if (typeof x === "number" && Number.isInteger(x)) { if (x >= 0) head(0, x); else head(1, -1 - x); }
    else if (typeof x === "number") { const b = Buffer.alloc(9); b[0] = 0xfb; b.writeDoubleBE(x, 1); out.push(...b); }
    else if (typeof x === "string") { const b = Buffer.from(x, "utf8"); head(3, b.length); out.push(...b); }
    else if (Array.isArray(x)) { head(4, x.length); x.forEach(enc); }
    else if (typeof x === "object") { const ks = Object.keys(x); head(5, ks.length); for (const k of ks) { enc(k); enc(x[k]); } }
    else throw new Error("cannot encode " + typeof x);
  }
  enc(v);
  return Buffer.from(out);
}

// ---- frames
const isUint = (v, hi) => typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= hi;
function checkWindow(w) {
  if (w === null || typeof w !== "object" || Array.isArray(w)) return false;
  return ["max_parallel", "max_tokens", "max_usd_micros"].every((k) => !(k in w) || isUint(w[k], Number.MAX_SAFE_INTEGER) || typeof w[k] === "bigint" && w[k] >= 0n);
}
function validate(t, flags, sid, ext, payload) {
  const err = (code, why) => { throw new AtpError(code, why, sid); };
  if ("session_id" in ext && (typeof ext.session_id !== "string" || [...ext.session_id].length > 128)) err("EPROTO", "bad session_id");
  for (const k of Object.keys(ext)) if (HEADER_KEYS.has(k)) err("EPROTO", "a header key in ext: " + k);
  if (t === 0) {
    if (sid === 0) {
      if (!(flags & 32)) err("EPROTO", "DATA on stream 0 without HB");
      if (payload.length > MAX_HB) err("ETOOBIG", "heartbeat payload over 64 bytes");
    } else if ((flags & 1) && "window" in ext && !checkWindow(ext.window)) err("EPROTO", "bad SYN window");
  } else if (t === 1 || t === 3) {
    if (sid === 0) err("EPROTO", "WINDOW_UPDATE/BUDGET_UPDATE on stream 0");
    if (t === 1) {
      if (!("credit" in ext) && !("window" in ext)) err("EPROTO", "WINDOW_UPDATE without credit or window");
      if ("credit" in ext && !(isUint(ext.credit, MAX_WINDOW) && ext.credit >= 1)) err("EPROTO", "credit must be 1 .. 2^31-1");
      if ("window" in ext && !checkWindow(ext.window)) err("EPROTO", "bad window");
    }
  } else if (t === 2) {
    if (sid !== 0) err("EPROTO", "CAPABILITIES on a stream");
    if (ext.caps === null || typeof ext.caps !== "object" || Array.isArray(ext.caps)) throw new AtpError("EPROTO", "CAPABILITIES without caps", 0);
  } else if (t === 4) {
    const e = ext.error;
    if (e === null || typeof e !== "object" || typeof e.code !== "string" || typeof e.message !== "string") err("EPROTO", "ERROR without code and message");
  }
}
// ext byte strings become padded base64 text, at any depth (ATP-JSON-011)
function b64Bytes(v) {
  if (Buffer.isBuffer(v)) return v.toString("base64");
  if (Array.isArray(v)) return v.map(b64Bytes);
  if (v !== null && typeof v === "object") {
    const o = {};
    for (const [k, x] of Object.entries(v)) o[k] = b64Bytes(x);
    return o;
  }
  return v;
}

function jsonable(v) {
  if (Buffer.isBuffer(v) || typeof v === "bigint") return false;
  if (Array.isArray(v)) return v.every(jsonable);
  if (v !== null && typeof v === "object") return Object.values(v).every(jsonable);
  return true;
}
function decodeMessage(buf) {
  const frames = [];
  let pos = 0;
  while (pos < buf.length) {
    if (buf.length - pos < 24) throw new AtpError("EPROTO", "message ends inside a header", 0);
    const v = buf[pos], t = buf[pos + 1], flags = buf[pos + 2], qos = buf[pos + 3];
    const sidRaw = buf.readUInt32BE(pos + 4), seq = buf.readUInt32BE(pos + 8);
    const frag = buf.readUInt16BE(pos + 12), ttl = buf.readUInt16BE(pos + 14);
    const extLen = buf.readUInt32BE(pos + 16), payLen = buf.readUInt32BE(pos + 20);
    if (v !== 1) throw new AtpError("EPROTO", "version " + v, 0);
    if (sidRaw & 0x80000000) throw new AtpError("EPROTO", "reserved stream-id bit", 0);
    const sid = sidRaw;
    if (extLen + payLen > MAX_FRAME) throw new AtpError("ETOOBIG", "frame over max_frame_size", sid);
    if (pos + 24 + extLen + payLen > buf.length) throw new AtpError("EPROTO", "message ends inside a frame", 0);
    const extB = buf.subarray(pos + 24, pos + 24 + extLen), payB = buf.subarray(pos + 24 + extLen, pos + 24 + extLen + payLen);
    pos += 24 + extLen + payLen;
    const out = { v: 1, stream_id: sid, msg_seq: seq, frag_seq: frag, flags: FLAGS.filter(([, b]) => flags & b).map(([n]) => n) };
    if (t >= TYPES.length) {  // ATP-FRAME-010: unknown type, body skipped unread
      Object.assign(out, { type: t, qos, ttl, payload_b64: Buffer.from(payB).toString("base64") });
      frames.push(out); continue;
    }
    if (t !== 0) out.type = TYPES[t];
    if (qos > 3) throw new AtpError("EPROTO", "qos above 3", sid);
    if (qos) out.qos = QOS[qos];
    if (ttl) out.ttl = ttl;
    if (extLen > MAX_EXT) throw new AtpError("ETOOBIG", "ext over max_ext_size", sid);
    let ext = {};
    if (extLen) {
      try { ext = cborDecode(extB, true, MAX_DEPTH); } catch (e) { throw new AtpError("EPROTO", "bad ext: " + e.message, sid); }
      if (ext === null || typeof ext !== "object" || Array.isArray(ext) || Buffer.isBuffer(ext)) throw new AtpError("EPROTO", "ext is not a map", sid);
    }
    validate(t, flags, sid, ext, payB);
    for (const [k, val] of Object.entries(ext)) out[k] = b64Bytes(val);
    if (payLen) {
      let p, ok = true;
      try { p = cborDecode(payB, false, 64); ok = jsonable(p); } catch (e) { ok = false; }
      if (ok) out.payload = p; else out.payload_b64 = Buffer.from(payB).toString("base64");
    }
    frames.push(out);
  }
  return frames;
}
function encodeFrame(m) {
  const t = m.type === undefined ? 0 : typeof m.type === "number" ? m.type : TYPES.indexOf(m.type);
  if (t < 0) throw new Error("unknown type " + m.type);
  let flags = 0;
  for (const f of m.flags || []) { const hit = FLAGS.find(([n]) => n === f); if (hit) flags |= hit[1]; }
  const qos = m.qos === undefined ? 0 : typeof m.qos === "number" ? m.qos : QOS.indexOf(m.qos);
  const ext = {};
  for (const [k, v] of Object.entries(m)) if (!HEADER_KEYS.has(k)) ext[k] = v;
  const extB = Object.keys(ext).length ? cborEncode(ext) : Buffer.alloc(0);
  const payB = m.payload_b64 !== undefined ? Buffer.from(m.payload_b64, "base64") : m.payload === undefined || m.payload === null ? Buffer.alloc(0) : cborEncode(m.payload);
  const h = Buffer.alloc(24);
  h[0] = m.v === undefined ? 1 : m.v; h[1] = t; h[2] = flags; h[3] = qos;
  h.writeUInt32BE(m.stream_id || 0, 4); h.writeUInt32BE(m.msg_seq || 0, 8);
  h.writeUInt16BE(m.frag_seq || 0, 12); h.writeUInt16BE(m.ttl || 0, 14);
  h.writeUInt32BE(extB.length, 16); h.writeUInt32BE(payB.length, 20);
  return Buffer.concat([h, extB, payB]);
}

function handle(req) {
  if (req.op === "hello") return { ok: true, name: "node-codec", claims: ["L1"] };
  if (req.op === "decode") {
    if (typeof req.hex !== "string" || !/^([0-9a-fA-F]{2})*$/.test(req.hex)) return { ok: false, error: "BAD_REQUEST", message: "hex" };
    try { return { ok: true, frames: decodeMessage(Buffer.from(req.hex, "hex")) }; }
    catch (e) {
      if (e instanceof AtpError) return { ok: false, error: e.code, scope: e.stream === 0 ? "connection" : "stream", message: e.message };
      return { ok: false, error: "EPROTO", scope: "connection", message: String(e.message) };
    }
  }
  if (req.op === "encode") {
    try { return { ok: true, hex: encodeFrame(req.frame || {}).toString("hex") }; }
    catch (e) { return { ok: false, error: "EPROTO", message: String(e.message) }; }
  }
  return { ok: false, error: "BAD_REQUEST", message: "unknown op" };
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let reply;
  try { reply = handle(JSON.parse(line)); } catch (e) { reply = { ok: false, error: "BAD_REQUEST", message: "not JSON" }; }
  process.stdout.write(JSON.stringify(reply) + "\n");
});
