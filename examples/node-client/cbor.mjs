// Strict CBOR (RFC 8949) for ATP/1 ext maps and payloads, written from spec/atp-v1.md
// §3 (ATP-FRAME-005, ATP-FRAME-006) and RFC 8949 alone: definite lengths only, no tags,
// no duplicate map keys, no NaN / infinite floats, nothing after the item.
//
// Decoded maps are plain objects with a null prototype (keys must be text for ATP ext; a
// non-text key is reported as an error). Integers beyond 2^53 decode to BigInt.

export class CborError extends Error {}

/** Raw bytes spliced verbatim into an encoding (used by probes to build broken CBOR). */
export class Raw {
  constructor(bytes) { this.bytes = Uint8Array.from(bytes); }
}

const te = new TextEncoder();
const td = new TextDecoder('utf-8', { fatal: true });

function head(major, n, out) {
  // n: number or bigint, the argument of the initial byte
  const m = major << 5;
  if (typeof n === 'bigint') {
    if (n < 0n || n > 0xffffffffffffffffn) throw new CborError('integer out of CBOR range');
    if (n <= 0xffffffffn) return head(major, Number(n), out);
    out.push(m | 27);
    for (let s = 56n; s >= 0n; s -= 8n) out.push(Number((n >> s) & 0xffn));
    return;
  }
  if (n < 24) out.push(m | n);
  else if (n < 0x100) out.push(m | 24, n);
  else if (n < 0x10000) out.push(m | 25, n >> 8, n & 0xff);
  else if (n < 0x100000000) out.push(m | 26, (n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
  else head(major, BigInt(n), out);
}

function enc(v, out) {
  if (v instanceof Raw) { for (const b of v.bytes) out.push(b); return; }
  if (v === null || v === undefined) { out.push(0xf6); return; }
  if (v === false) { out.push(0xf4); return; }
  if (v === true) { out.push(0xf5); return; }
  if (typeof v === 'bigint') { if (v >= 0n) head(0, v, out); else head(1, -1n - v, out); return; }
  if (typeof v === 'number') {
    if (Number.isInteger(v) && Math.abs(v) <= Number.MAX_SAFE_INTEGER) {
      if (v >= 0) head(0, v, out); else head(1, -1 - v, out);
      return;
    }
    const b = new DataView(new ArrayBuffer(8));
    b.setFloat64(0, v);
    out.push(0xfb);
    for (let i = 0; i < 8; i++) out.push(b.getUint8(i));
    return;
  }
  if (typeof v === 'string') { const u = te.encode(v); head(3, u.length, out); for (const b of u) out.push(b); return; }
  if (v instanceof Uint8Array) { head(2, v.length, out); for (const b of v) out.push(b); return; }
  if (Array.isArray(v)) { head(4, v.length, out); for (const x of v) enc(x, out); return; }
  if (v instanceof Map) { head(5, v.size, out); for (const [k, x] of v) { enc(k, out); enc(x, out); } return; }
  if (typeof v === 'object') {
    const ks = Object.keys(v);
    head(5, ks.length, out);
    for (const k of ks) { enc(k, out); enc(v[k], out); }
    return;
  }
  throw new CborError(`cannot encode ${typeof v}`);
}

/** Encode a JS value (objects and Maps become CBOR maps, Uint8Array a byte string). */
export function encode(v) {
  const out = [];
  enc(v, out);
  return Uint8Array.from(out);
}

/** Decode exactly one strict CBOR item filling `bytes`; throws CborError otherwise. */
export function decode(bytes, { maxDepth = 64 } = {}) {
  const u = bytes instanceof Uint8Array ? bytes : Uint8Array.from(bytes);
  const dv = new DataView(u.buffer, u.byteOffset, u.byteLength);
  let pos = 0;
  const need = (n) => { if (pos + n > u.length) throw new CborError('truncated CBOR'); };
  function arg(ai) {
    if (ai < 24) return ai;
    if (ai === 24) { need(1); return u[pos++]; }
    if (ai === 25) { need(2); const x = dv.getUint16(pos); pos += 2; return x; }
    if (ai === 26) { need(4); const x = dv.getUint32(pos); pos += 4; return x; }
    if (ai === 27) {
      need(8); const x = dv.getBigUint64(pos); pos += 8;
      return x <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(x) : x;
    }
    if (ai === 31) throw new CborError('indefinite-length item');
    throw new CborError(`reserved additional info ${ai}`);
  }
  function item(depth) {
    if (depth > maxDepth) throw new CborError('nesting too deep');
    need(1);
    const ib = u[pos++];
    const major = ib >> 5, ai = ib & 31;
    switch (major) {
      case 0: return arg(ai);
      case 1: { const n = arg(ai); return typeof n === 'bigint' ? -1n - n : (n + 1 > Number.MAX_SAFE_INTEGER ? -1n - BigInt(n) : -1 - n); }
      case 2: { const n = arg(ai); if (typeof n === 'bigint') throw new CborError('too long'); need(n); const b = u.slice(pos, pos + n); pos += n; return b; }
      case 3: {
        const n = arg(ai); if (typeof n === 'bigint') throw new CborError('too long'); need(n);
        let s; try { s = td.decode(u.subarray(pos, pos + n)); } catch { throw new CborError('text is not UTF-8'); }
        pos += n; return s;
      }
      case 4: { const n = arg(ai); const a = []; for (let i = 0; i < n; i++) a.push(item(depth + 1)); return a; }
      case 5: {
        const n = arg(ai); const o = Object.create(null); const seen = new Set();
        for (let i = 0; i < n; i++) {
          const k = item(depth + 1);
          if (typeof k !== 'string') throw new CborError('map key is not text');
          if (seen.has(k)) throw new CborError(`duplicate key ${JSON.stringify(k)}`);
          seen.add(k);
          o[k] = item(depth + 1);
        }
        return o;
      }
      case 6: throw new CborError('CBOR tag');
      default: {
        if (ai === 20) return false; if (ai === 21) return true; if (ai === 22) return null;
        if (ai === 23) return undefined;
        let f;
        if (ai === 25) { need(2); f = halfToFloat(dv.getUint16(pos)); pos += 2; }
        else if (ai === 26) { need(4); f = dv.getFloat32(pos); pos += 4; }
        else if (ai === 27) { need(8); f = dv.getFloat64(pos); pos += 8; }
        else throw new CborError(`simple value ${ai}`);
        if (!Number.isFinite(f)) throw new CborError('NaN or infinite float');
        return f;
      }
    }
  }
  const v = item(0);
  if (pos !== u.length) throw new CborError('trailing bytes after CBOR item');
  return v;
}

function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
