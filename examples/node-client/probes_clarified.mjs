// Probes of the spec points this client found unclear (README "Where the spec was
// unclear"), as the spec now decides them: each names the requirement that settled it.
import { syn } from './session.mjs';
import { fresh, streamError } from './probes.mjs';

const P = [];
const probe = (name, ids, fn) => P.push({ name, ids, fn });

for (const [name, meta] of [['array', [1]], ['text', 'qa'], ['number', 7]]) {
  probe(`syn_meta_${name}`, ['ATP-FRAME-025'], async (ctx) => {
    const s = await fresh(ctx);
    s.send(syn(1, { ext: { meta } }));
    return streamError(s, 1, 'EPROTO');
  });
}
for (const [key, value] of [['task_type', 42], ['adapters', 'echo'], ['fanout', '2'], ['min_confidence', 'high']]) {
  probe(`syn_meta_${key}_wrong_type`, ['ATP-FRAME-025'], async (ctx) => {
    const s = await fresh(ctx);
    s.send(syn(1, { meta: { [key]: value } }));
    const r = await streamError(s, 1, 'EPROTO');
    if (r.ok && !r.error.message.includes(key)) return { ok: false, detail: `EPROTO without naming ${key}: ${r.error.message}` };
    return r;
  });
}

export const PROBES = P;
