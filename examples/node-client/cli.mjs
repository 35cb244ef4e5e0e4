// The command line of client.mjs and run.mjs, in the form of the `atp` commands: an error
// is one line on stderr, `PROG: error: WHAT`, never a stack trace; bad usage adds where the
// options are listed and exits 2, a failure exits 1.
import fs from 'node:fs';

/** Print `PROG: error: MESSAGE` (one line) and exit `code`. */
export function fail(prog, message, code = 1) {
  console.error(`${prog}: error: ${String(message).split(/\s+/).join(' ').trim()}`);
  process.exit(code);
}

/** Bad usage: `PROG: error: MESSAGE (see node PROG --help)`, exit 2. */
export function usageError(prog, message) {
  fail(prog, `${message} (see node ${prog} --help)`, 2);
}

/** Any exception nobody caught ends the process with one error line (exit 1), not a trace. */
export function catchAll(prog) {
  const last = (e) => fail(prog, e instanceof Error ? e.message : String(e), 1);
  process.on('uncaughtException', last);
  process.on('unhandledRejection', last);
}

/**
 * Parse argv: `valued` options take the next argument, `flags` none, one positional
 * ws:// or wss:// URL (required unless `urlOptional`). Bad usage exits 2. `--help` prints
 * `usage` and exits 0.
 */
export function parseArgs(prog, argv, { valued, flags, usage, urlOptional = false }) {
  const opts = {};
  let url;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') { console.log(usage); process.exit(0); }
    if (valued.includes(a)) {
      if (i + 1 >= argv.length) usageError(prog, `${a} needs a value`);
      opts[a] = argv[++i];
    } else if (flags.includes(a)) {
      opts[a] = true;
    } else if (a.startsWith('-')) {
      usageError(prog, `unknown option ${a}`);
    } else if (/^wss?:\/\//.test(a) && url === undefined) {
      url = a;
    } else {
      usageError(prog, url === undefined ? `${a} is not a ws:// or wss:// URL` : `unexpected argument ${a}`);
    }
  }
  if (url === undefined && !urlOptional) usageError(prog, 'a ws:// or wss:// URL is needed');
  return { url, opts };
}

/** A file named by `option`, read; unreadable: bad usage (exit 2). */
export function readInput(prog, option, name, encoding) {
  try {
    return fs.readFileSync(name, encoding);
  } catch (e) {
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'not a file' : e.message;
    return usageError(prog, `cannot read ${option} ${name}: ${why}`);
  }
}
