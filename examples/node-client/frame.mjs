// ATP/1 binary frames (spec/atp-v1.md §3-§5): the 24-byte header, CBOR ext, opaque payload.
import { encode as cborEncode, decode as cborDecode } from './cbor.mjs';

export const T = { DATA: 0, WINDOW_UPDATE: 1, CAPABILITIES: 2, BUDGET_UPDATE: 3, ERROR: 4 };
export const F = { SYN: 0x01, ACK: 0x02, MORE: 0x04, FIN: 0x08, RST: 0x10, HB: 0x20, CONT: 0x40 };
export const QOS = { unspecified: 0, gold: 1, silver: 2, bronze: 3 };
export const HEADER = 24;
// §11: the WebSocket close code of each error code.
export const CLOSE = {
  EPROTO: 1002, ESEQ_RETRY: 4001, EWINDOW: 4002, EBUDGET: 4003, ETIMEOUT: 4004, EAGENTDOWN: 4005,
  ESEC: 1008, ECONSENSUS: 4007, EPREEMPT: 4008, EDRAINING: 1001, EWINDOW_AGENT: 4010,
  ETOOBIG: 1009, EINTERNAL: 1011,
};

/**
 * Build one binary frame. `ext` is an object (CBOR-encoded; `null`/absent: ext_len 0) or a
 * Uint8Array of raw ext bytes; `payload` a Uint8Array or a value to CBOR-encode.
 * `extLen` / `payloadLen` override the header's lengths (for broken-frame probes).
 */
export function frame({ version = 1, type = T.DATA, flags = 0, qos = 0, stream = 0, msgSeq = 0,
  fragSeq = 0, ttl = 0, ext = null, payload = null, extLen, payloadLen, reservedBit = false } = {}) {
  const e = ext == null ? new Uint8Array(0) : ext instanceof Uint8Array ? ext : cborEncode(ext);
  const p = payload == null ? new Uint8Array(0) : payload instanceof Uint8Array ? payload : cborEncode(payload);
  const buf = Buffer.alloc(HEADER + e.length + p.length);
  buf.writeUInt8(version, 0); buf.writeUInt8(type, 1); buf.writeUInt8(flags, 2); buf.writeUInt8(qos, 3);
  buf.writeUInt32BE(((reservedBit ? 0x80000000 : 0) | stream) >>> 0, 4);
  buf.writeUInt32BE(msgSeq >>> 0, 8); buf.writeUInt16BE(fragSeq, 12); buf.writeUInt16BE(ttl, 14);
  buf.writeUInt32BE(extLen ?? e.length, 16); buf.writeUInt32BE(payloadLen ?? p.length, 20);
  buf.set(e, HEADER); buf.set(p, HEADER + e.length);
  return buf;
}

export function concat(...frames) { return Buffer.concat(frames.map((f) => Buffer.from(f))); }

/**
 * Split one binary WebSocket message into frames (ATP-WS-001: whole frames back to back).
 * ext is decoded (strictly) for the known types; `extError` records a decode failure.
 */
export function parseMessage(buf) {
  const frames = [];
  let pos = 0;
  while (pos < buf.length) {
    if (buf.length - pos < HEADER) throw new Error(`message ends inside a frame header at ${pos}`);
    const h = {
      version: buf[pos], type: buf[pos + 1], flags: buf[pos + 2], qos: buf[pos + 3],
      stream: buf.readUInt32BE(pos + 4) & 0x7fffffff, reserved: (buf[pos + 4] & 0x80) !== 0,
      msgSeq: buf.readUInt32BE(pos + 8), fragSeq: buf.readUInt16BE(pos + 12), ttl: buf.readUInt16BE(pos + 14),
      extLen: buf.readUInt32BE(pos + 16), payloadLen: buf.readUInt32BE(pos + 20),
    };
    const end = pos + HEADER + h.extLen + h.payloadLen;
    if (end > buf.length) throw new Error('message ends inside a frame body');
    h.extBytes = buf.subarray(pos + HEADER, pos + HEADER + h.extLen);
    h.payload = buf.subarray(pos + HEADER + h.extLen, end);
    h.cost = HEADER + h.extLen + h.payloadLen;
    h.ext = Object.create(null);
    if (h.type <= 4 && h.extLen > 0) {
      try { h.ext = cborDecode(h.extBytes); } catch (err) { h.extError = String(err.message); }
    }
    frames.push(h);
    pos = end;
  }
  return frames;
}

export function decodePayload(fr) {
  try { return fr.payload.length ? cborDecode(fr.payload) : null; } catch { return undefined; }
}

export function flagNames(flags) {
  return Object.entries(F).filter(([, b]) => flags & b).map(([n]) => n);
}
