/**
 * What a `matches` filter costs (issue 19): JavaScript's RegExp against the
 * RE2 engine of lib/protocol/pattern.ts on typical patterns, then the
 * slowest filter the default limits accept against a large entity.
 *
 *   npm run bench:filters                  # about a minute on 2 cores
 *   tsx bench/filters.ts --largest 65536   # the large string's length (default 64 KiB)
 *
 * One process, no sockets: this measures the per-(event, session) filter
 * evaluation alone. Figures are µs per evaluation (median of 5 batches);
 * they move with the machine and anything else running on it.
 */
import { parseArgs } from 'node:util';
import { DEFAULT_FILTER_LIMITS, compileFilter } from '../lib/protocol/filter.js';
import { compilePattern } from '../lib/protocol/pattern.js';

const { values } = parseArgs({
  options: { largest: { type: 'string' }, help: { type: 'boolean' } },
});
if (values.help === true) {
  console.log('tsx bench/filters.ts [--largest CHARS]');
  process.exit(0);
}
const LARGEST = Number(values.largest ?? 64 * 1024);

/** µs per call of `fn`, median of 5 batches each of at least ~`ms` milliseconds. */
function perCall(fn: () => unknown, ms = 200): number {
  let calls = 1;
  for (;;) {
    const started = performance.now();
    for (let i = 0; i < calls; i += 1) fn();
    if (performance.now() - started > ms / 4) break;
    calls *= 2;
  }
  const samples: number[] = [];
  for (let batch = 0; batch < 5; batch += 1) {
    const started = performance.now();
    for (let i = 0; i < calls; i += 1) fn();
    samples.push(((performance.now() - started) * 1000) / calls);
  }
  return samples.sort((a, b) => a - b)[2] as number;
}

function format(us: number): string {
  if (us >= 1_000_000) return `${(us / 1_000_000).toFixed(2)} s`;
  if (us >= 1000) return `${(us / 1000).toFixed(1)} ms`;
  return `${us.toFixed(us < 1 ? 3 : 2)} µs`;
}

// --- 1. Typical patterns on a 200-byte entity attribute -----------------------------------

// What a task tracker's entity carries: a 200-character description.
const description =
  'Customer reports that the login page of task-4242 hangs after the password step; ' +
  'seen on Firefox and Chrome since the 2026-11-23 release. Marked urgent by support, ' +
  'assigned to the core team.';
const text200 = description.slice(0, 200).padEnd(200, '.');
const typical: readonly (readonly [string, RegExp, string])[] = [
  ['^task-\\d+$', /^task-\d+$/u, 'task-4242'],
  ['foo|bar', /foo|bar/u, text200],
  ['(?i)urgent', /urgent/iu, text200],
  ['^\\d{4}-\\d{2}-\\d{2}T', /^\d{4}-\d{2}-\d{2}T/u, '2026-11-23T21:40:00.123Z'],
  ['login', /login/u, text200],
  ['\\bhangs?\\b.*release', /\bhangs?\b.*release/u, text200],
];

console.log(`node ${process.version}, ${process.arch}\n`);
console.log('typical patterns, µs per test (median of 5 batches)');
console.log('pattern                      input   RegExp    re2js    (RE2 instructions)');
for (const [source, native, input] of typical) {
  const re2 = compilePattern(source);
  if (re2.test(input) !== native.test(input)) throw new Error(`${source}: engines disagree`);
  const a = perCall(() => native.test(input));
  const b = perCall(() => re2.test(input));
  const engine = re2.size === 0 ? 'string search' : String(re2.size);
  console.log(
    `${source.padEnd(28)} ${String(input.length).padStart(5)} ${format(a).padStart(10)} ${format(b).padStart(10)}    (${engine})`,
  );
}

// --- 2. The slowest accepted filter against the largest entity -----------------------------

// Candidates for the most expensive instruction: counted repeats of
// classes, which make RE2's lazy DFA outgrow its memory budget and fall back
// to the NFA, whose cost is (live instructions × characters). Each is
// measured per instruction on a 16 KiB string; the worst fills the budget.
const PROBE = 16 * 1024;
const letters = Array.from({ length: PROBE }, (_, i) => 'ab'[((i * 7919) % 5) % 2]).join('');
const candidates: readonly (readonly [string, string])[] = [
  ['\\pL{999}\\d', letters],
  ['(?i)\\pL{999}\\d', letters],
  ['[a-z]{999}\\d', letters],
  ['\\w{999}!', letters],
  ['(?s).{999}\\x00', letters],
  [`${'.*'.repeat(127)}\\d`, letters],
  ['(?:a|b|ab|ba)*\\d', letters],
];
console.log(`\nper-instruction cost on a ${PROBE / 1024} KiB string of letters`);
let worst = { source: '', perInstruction: 0, size: 1 };
for (const [source, input] of candidates) {
  const pattern = compilePattern(source);
  const us = perCall(() => pattern.test(input), 50);
  const perInstruction = (us * 1000) / (pattern.size * input.length);
  console.log(
    `${source.slice(0, 28).padEnd(28)} ${String(pattern.size).padStart(5)} instructions ${format(us).padStart(10)}  ${perInstruction.toFixed(2)} ns per (instruction × char)`,
  );
  if (perInstruction * pattern.size > worst.perInstruction * worst.size) {
    worst = { source, perInstruction, size: pattern.size };
  }
}

// The worst pattern, as many times as the instruction budget allows, each
// on the same large attribute (every occurrence counts, and runs).
const copies = Math.floor(DEFAULT_FILTER_LIMITS.maxPatternProgram / worst.size);
const slowest = `s matches [${Array(copies).fill(JSON.stringify(worst.source)).join(', ')}]`;
const filter = compileFilter(slowest);
const large = Array.from({ length: LARGEST }, (_, i) => 'ab'[((i * 7919) % 5) % 2]).join('');
// The longest string the filter still runs RE2 on (maxMatchCost / its instructions): the
// worst case. A longer one (the largest entity) is not run at all.
const affordable = Math.floor(DEFAULT_FILTER_LIMITS.maxMatchCost / (copies * worst.size));
const compileUs = perCall(() => compileFilter(slowest), 200);
const started = performance.now();
filter.match({ s: large.slice(0, affordable) });
const evaluationUs = (performance.now() - started) * 1000;
const skippedUs = perCall(() => filter.match({ s: large }), 200);
console.log(
  `\nslowest accepted filter: ${copies} × ${JSON.stringify(worst.source)} ` +
    `(${copies * worst.size} of ${DEFAULT_FILTER_LIMITS.maxPatternProgram} instructions)`,
);
console.log(`  compile: ${format(compileUs)}`);
console.log(
  `  one evaluation on a ${affordable}-character attribute (the longest it runs RE2 on): ${format(evaluationUs)} ` +
    `(${((evaluationUs * 1000) / (copies * worst.size * affordable)).toFixed(2)} ns per instruction × char)`,
);
console.log(
  `  on a ${LARGEST}-character attribute (past maxMatchCost: no match): ${format(skippedUs)}`,
);

// The same budget spent on plain text: the string-search fast path.
const plain = `s matches [${Array(DEFAULT_FILTER_LIMITS.maxListLength).fill('"abba!"').join(', ')}]`;
const plainFilter = compileFilter(plain);
const plainChars = Math.floor(
  DEFAULT_FILTER_LIMITS.maxMatchCost / DEFAULT_FILTER_LIMITS.maxListLength,
);
const plainUs = perCall(() => plainFilter.match({ s: large.slice(0, plainChars) }), 200);
console.log(
  `  for comparison, ${DEFAULT_FILTER_LIMITS.maxListLength} plain-text patterns on ${plainChars} characters (their longest): ${format(plainUs)}`,
);
