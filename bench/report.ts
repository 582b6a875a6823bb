/**
 * The benchmark's outputs: the results' shape (written as JSON), the
 * console table, the markdown table for the README and the SVG chart,
 * written by hand so the benchmark needs no dependency.
 */
import { MODE_LABELS, MODES, VARIANTS, type Mode, type Variant } from './common.js';
import type { ScaleFigures } from './scale-report.js';

/** Median and spread of the repetitions of one figure. */
export interface Summary {
  median: number;
  min: number;
  max: number;
  /** Every repetition, in the order measured. */
  values: number[];
}

/** Summarizes repetitions; NaN everywhere when there are none. */
export function summarize(values: readonly number[]): Summary {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length === 0) return { median: NaN, min: NaN, max: NaN, values: [...values] };
  const sorted = [...finite].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median =
    sorted.length % 2 === 1
      ? (sorted[mid] as number)
      : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
  return {
    median,
    min: sorted[0] as number,
    max: sorted[sorted.length - 1] as number,
    values: [...values],
  };
}

/** Throughput figures of one mode at one session count. */
export interface ThroughputFigures {
  /** Frames received by all clients per second. */
  deliveriesPerSec: Summary;
  /** Events per second each session received. */
  eventsPerSecPerSession: Summary;
  /** Server CPU time (user + system) per delivery, µs. */
  cpuUsPerDelivery: Summary;
  /** The kernel's (system time) part of cpuUsPerDelivery, µs. */
  systemUsPerDelivery: Summary;
  /** Server CPU, % of one core. */
  serverCpuPct: Summary;
  /** The busiest client child's CPU, % of one core. */
  clientCpuPctMax: Summary;
  /** The whole machine's busy CPU, % of one core. */
  machineCpuPct: Summary;
  /** Busy CPU charged to neither server nor clients (other processes, softirq), % of one core. */
  otherCpuPct: Summary;
  /** Events dropped by the server (pushwire's slow-consumer counter). */
  dropped: Summary;
  /** Idle RSS per session after GC, KiB (measured at the largest session count). */
  memoryPerSessionKiB?: Summary;
  /** Idle V8 heap per session after GC, KiB. */
  heapPerSessionKiB?: Summary;
}

/** Latency figures of one mode at one session count, at a fixed load. */
export interface LatencyFigures {
  /** Per delivery, ms. */
  p50: Summary;
  p99: Summary;
  /** Per event, the last session to receive it, ms. */
  lastP50: Summary;
  lastP99: Summary;
  /** Events per second actually published. */
  achievedRate: Summary;
  /** Events of the window that did not reach every session. */
  incompleteEvents: Summary;
  clientCpuPctMax: Summary;
  serverCpuPct: Summary;
  otherCpuPct: Summary;
}

/** Per-session work figures of one variant (pushwire JSON). */
export interface WorkFigures {
  deliveriesPerSec: Summary;
  cpuUsPerDelivery: Summary;
  clientCpuPctMax: Summary;
  /** Median delivered rate over the `none` variant's. */
  ratio: number;
}

/** Slow-consumer figures of one mode. */
export interface SlowFigures {
  /** Events per second per reading session. */
  othersEventsPerSecPerSession: Summary;
  othersDeliveriesPerSec: Summary;
  /** Median per-session rate over the same mode's without slow consumers. */
  ratioToBaseline: number;
  /** Where that baseline comes from: runs interleaved with these (`paired`), or the throughput phase. */
  baseline: 'paired' | 'throughput phase';
  rssStartMiB: Summary;
  rssEndMiB: Summary;
  rssMaxMiB: Summary;
  /** RSS growth over the second half of the window, MiB: near 0 once bounded. */
  rssGrowthSecondHalfMiB: Summary;
  dropped: Summary;
  /** RSS over time of the first repetition: [seconds since load start, MiB]. */
  rssSeries: Array<[number, number]>;
}

/** One transport's figures in the sse phase. */
export interface TransportFigures {
  deliveriesPerSec: Summary;
  cpuUsPerDelivery: Summary;
  memoryPerSessionKiB: Summary;
  heapPerSessionKiB: Summary;
}

/** Server-Sent Events against WebSocket JSON on the same pushwire server (issue 16). */
export interface SseFigures {
  sessions: number;
  websocket: TransportFigures;
  sse: TransportFigures;
  /** Median delivered rate, SSE over WebSocket. */
  rateRatio: number;
  /** Median server CPU per delivery, SSE over WebSocket. */
  cpuRatio: number;
  /** Median idle RSS per session, SSE over WebSocket. */
  memoryRatio: number;
  /** Delivered rate SSE over WebSocket within each repetition (measured back to back). */
  pairRateRatios: Summary;
  /** Server CPU per delivery SSE over WebSocket within each repetition. */
  pairCpuRatios: Summary;
}

/** The cost of history (issue 14), pushwire JSON on LocalPubSub. */
export interface HistoryFigures {
  /** Sessions of the fan-out with history on and off. */
  sessions: number;
  /** The history's maxEvents in the fan-out with history on. */
  maxEvents: number;
  off: { deliveriesPerSec: Summary; cpuUsPerDelivery: Summary };
  on: { deliveriesPerSec: Summary; cpuUsPerDelivery: Summary };
  /** Median delivered rate, history on over off. */
  rateRatio: number;
  /** Median server CPU per delivery, history on over off. */
  cpuRatio: number;
  /** Delivered rate on over off within each repetition (the two measured back to back). */
  pairRateRatios: Summary;
  /** Server CPU per delivery on over off within each repetition. */
  pairCpuRatios: Summary;
  replay: {
    /** Events replayed to the one resuming session, before its recovery frame. */
    events: number;
    /** From the handshake's open to the recovery frame. */
    eventsPerSec: Summary;
    /** Server CPU over the replay, per event replayed. */
    cpuUsPerEvent: Summary;
    /** The reference: live events to one session at maximum load, history on. */
    liveOneSession: { deliveriesPerSec: Summary; cpuUsPerDelivery: Summary };
    /** Median replay rate over the median live rate to one session. */
    ratioToLive: number;
  };
  /** bench/history-memory.ts's figures; absent when it failed. */
  memory?: {
    events: number;
    payloadBytes: number;
    retainedMB: number;
    bytesPerEvent: number;
    overheadPerEvent: number;
    afterThreeTimesMoreMB: number;
  };
}

/** One target of issue 7 (or 8), evaluated on medians. */
export interface TargetCheck {
  name: string;
  measured: string;
  target: string;
  met: boolean;
}

/** Everything a run produced. */
export interface BenchResults {
  environment: {
    node: string;
    cpuModel: string;
    cores: number;
    platform: string;
    totalMemoryMiB: number;
    date: string;
  };
  options: Record<string, unknown>;
  durationSeconds: number;
  sessionCounts: number[];
  throughput: Record<string, Partial<Record<Mode, ThroughputFigures>>>;
  latency: Record<
    string,
    { rateEventsPerSec: number; modes: Partial<Record<Mode, LatencyFigures>> }
  >;
  work?: { sessions: number; variants: Partial<Record<Variant, WorkFigures>> };
  slow?: {
    sessions: number;
    slowSessions: number;
    modes: Partial<Record<Mode, SlowFigures>>;
  };
  history?: HistoryFigures;
  /** The sse phase's figures, when it ran. */
  sse?: SseFigures;
  /** The scale phase (issue 15); written to scale.json and scale.md. */
  scale?: ScaleFigures;
  targets: TargetCheck[];
  failures: string[];
}

// ---------------------------------------------------------------------------
// Formatting

/** 1234567 → "1.23 M". */
export function formatCount(n: number): string {
  if (!Number.isFinite(n)) return '–';
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(0)} k`;
  if (Math.abs(n) >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return n.toFixed(n >= 100 ? 0 : 1);
}

function fixed(digits: number): (n: number) => string {
  return (n) => (Number.isFinite(n) ? n.toFixed(digits) : '–');
}

/** "median (min–max)". */
export function formatSummary(s: Summary | undefined, format: (n: number) => string): string {
  if (s === undefined || !Number.isFinite(s.median)) return '–';
  if (s.values.length <= 1) return format(s.median);
  return `${format(s.median)} (${format(s.min)}–${format(s.max)})`;
}

type Row = [string, ...string[]];

/** The rows of the main table: one per figure, one column per mode. */
export function mainRows(results: BenchResults): { header: Row; rows: Row[] } {
  const modes = MODES.filter((m) =>
    Object.values(results.throughput).some((t) => t[m] !== undefined),
  );
  const header: Row = ['figure', ...modes.map((m) => MODE_LABELS[m])];
  const rows: Row[] = [];
  const add = (label: string, cell: (mode: Mode) => string): void => {
    rows.push([label, ...modes.map(cell)]);
  };
  for (const sessions of results.sessionCounts) {
    const t = results.throughput[String(sessions)];
    if (t === undefined) continue;
    add(`delivered events/s, ${sessions} sessions`, (m) =>
      formatSummary(t[m]?.deliveriesPerSec, formatCount),
    );
    add(`server CPU µs/delivery, ${sessions}`, (m) =>
      formatSummary(t[m]?.cpuUsPerDelivery, fixed(3)),
    );
    add(`server CPU µs/delivery in the kernel (system), ${sessions}`, (m) =>
      formatSummary(t[m]?.systemUsPerDelivery, fixed(3)),
    );
    add(`server CPU % of a core, ${sessions}`, (m) => formatSummary(t[m]?.serverCpuPct, fixed(0)));
    add(`client CPU % (busiest child), ${sessions}`, (m) =>
      formatSummary(t[m]?.clientCpuPctMax, fixed(0)),
    );
    add(`machine CPU % of a core (not bench processes), ${sessions}`, (m) => {
      const f = t[m];
      return f === undefined
        ? '–'
        : `${fixed(0)(f.machineCpuPct.median)} (${fixed(0)(f.otherCpuPct.median)})`;
    });
    add(`events dropped, ${sessions}`, (m) => formatSummary(t[m]?.dropped, fixed(0)));
  }
  for (const sessions of results.sessionCounts) {
    const l = results.latency[String(sessions)];
    if (l === undefined) continue;
    const at = `${sessions} sessions, ${formatCount(l.rateEventsPerSec)} events/s`;
    add(`latency p50 per delivery ms, ${at}`, (m) => formatSummary(l.modes[m]?.p50, fixed(2)));
    add(`latency p99 per delivery ms, ${at}`, (m) => formatSummary(l.modes[m]?.p99, fixed(2)));
    add(`latency p50 last session ms, ${at}`, (m) => formatSummary(l.modes[m]?.lastP50, fixed(2)));
    add(`latency p99 last session ms, ${at}`, (m) => formatSummary(l.modes[m]?.lastP99, fixed(2)));
    add(`events/s achieved, ${sessions}`, (m) =>
      formatSummary(l.modes[m]?.achievedRate, formatCount),
    );
  }
  const largest = results.sessionCounts[results.sessionCounts.length - 1];
  const mem = largest === undefined ? undefined : results.throughput[String(largest)];
  if (mem !== undefined && modes.some((m) => mem[m]?.memoryPerSessionKiB !== undefined)) {
    add(`idle RSS/session KiB, ${largest} sessions`, (m) =>
      formatSummary(mem[m]?.memoryPerSessionKiB, fixed(1)),
    );
    add(`idle heap/session KiB, ${largest} sessions`, (m) =>
      formatSummary(mem[m]?.heapPerSessionKiB, fixed(1)),
    );
  }
  const slow = results.slow;
  if (slow !== undefined) {
    const label = `${slow.slowSessions} of ${slow.sessions} never read`;
    add(`slow: others' events/s per session (${label})`, (m) =>
      formatSummary(slow.modes[m]?.othersEventsPerSecPerSession, formatCount),
    );
    add(`slow: others' rate / rate without slow consumers`, (m) => {
      const f = slow.modes[m];
      if (f === undefined || !Number.isFinite(f.ratioToBaseline)) return '–';
      return `${f.ratioToBaseline.toFixed(2)}×${f.baseline === 'paired' ? '' : ' (vs throughput phase)'}`;
    });
    add(`slow: server RSS start → end MiB`, (m) => {
      const f = slow.modes[m];
      return f === undefined
        ? '–'
        : `${fixed(0)(f.rssStartMiB.median)} → ${fixed(0)(f.rssEndMiB.median)} (max ${fixed(0)(f.rssMaxMiB.median)})`;
    });
    add(`slow: RSS growth, 2nd half MiB`, (m) =>
      formatSummary(slow.modes[m]?.rssGrowthSecondHalfMiB, fixed(1)),
    );
    add(`slow: events dropped`, (m) => formatSummary(slow.modes[m]?.dropped, fixed(0)));
  }
  return { header, rows };
}

/** The per-session work table (pushwire JSON). */
export function workRows(results: BenchResults): { header: Row; rows: Row[] } | undefined {
  const work = results.work;
  if (work === undefined) return undefined;
  const header: Row = [
    `per-session work, pushwire JSON, ${work.sessions} sessions`,
    'delivered events/s',
    'vs none',
    'server CPU µs/delivery',
  ];
  const labels: Record<Variant, string> = {
    none: 'none',
    config: 'push config that passes',
    dispatch: 'sync shouldDispatch plugin',
    'config+dispatch': 'push config + shouldDispatch',
    filter: 'filter `priority > 2 and status == "open"`',
    'tracing-unsampled': 'tracing plugin, sampler samples nothing',
  };
  const rows: Row[] = [];
  for (const variant of VARIANTS) {
    const f = work.variants[variant];
    if (f === undefined) continue;
    rows.push([
      labels[variant],
      formatSummary(f.deliveriesPerSec, formatCount),
      `${f.ratio.toFixed(2)}×`,
      formatSummary(f.cpuUsPerDelivery, fixed(3)),
    ]);
  }
  return { header, rows };
}

/** " (pairs 0.91–1.05×)": the spread of per-repetition ratios, when there are several. */
function pairRange(s: Summary | undefined): string {
  if (s === undefined || s.values.length <= 1 || !Number.isFinite(s.min)) return '';
  return ` (pairs ${s.min.toFixed(2)}–${s.max.toFixed(2)}×)`;
}

/** The cost-of-history table (pushwire JSON, LocalPubSub). */
export function historyRows(results: BenchResults): { header: Row; rows: Row[] } | undefined {
  const h = results.history;
  if (h === undefined) return undefined;
  const header: Row = ['cost of history, pushwire JSON, LocalPubSub', 'measured', 'ratio'];
  const rows: Row[] = [
    [
      `fan-out, ${h.sessions} sessions, history off: delivered events/s`,
      formatSummary(h.off.deliveriesPerSec, formatCount),
      '',
    ],
    [
      `fan-out, history on (maxEvents ${h.maxEvents}): delivered events/s`,
      formatSummary(h.on.deliveriesPerSec, formatCount),
      `${h.rateRatio.toFixed(2)}× off${pairRange(h.pairRateRatios)}`,
    ],
    [
      'fan-out, history off: server CPU µs/delivery',
      formatSummary(h.off.cpuUsPerDelivery, fixed(3)),
      '',
    ],
    [
      'fan-out, history on: server CPU µs/delivery',
      formatSummary(h.on.cpuUsPerDelivery, fixed(3)),
      `${h.cpuRatio.toFixed(2)}× off${pairRange(h.pairCpuRatios)}`,
    ],
    [
      'live, one session, history on: delivered events/s',
      formatSummary(h.replay.liveOneSession.deliveriesPerSec, formatCount),
      '',
    ],
    [
      'live, one session: server CPU µs/delivery (publishing included)',
      formatSummary(h.replay.liveOneSession.cpuUsPerDelivery, fixed(2)),
      '',
    ],
    [
      `replay of ${h.replay.events} events to one resuming session: events/s`,
      formatSummary(h.replay.eventsPerSec, formatCount),
      Number.isFinite(h.replay.ratioToLive) ? `${h.replay.ratioToLive.toFixed(2)}× live` : '',
    ],
    ['replay: server CPU µs/event', formatSummary(h.replay.cpuUsPerEvent, fixed(2)), ''],
  ];
  if (h.memory !== undefined) {
    const m = h.memory;
    rows.push([
      `history memory per ${m.events} events of ${m.payloadBytes} bytes`,
      `${m.retainedMB.toFixed(2)} MB (${m.bytesPerEvent} B/event, ${m.overheadPerEvent} overhead)`,
      '',
    ]);
    rows.push([
      `history memory after ${m.events * 3} more events (bounded)`,
      `${m.afterThreeTimesMoreMB.toFixed(2)} MB`,
      '',
    ]);
  }
  return { header, rows };
}

/** The SSE-against-WebSocket table. */
export function sseRows(results: BenchResults): { header: Row; rows: Row[] } | undefined {
  const f = results.sse;
  if (f === undefined) return undefined;
  const header: Row = [
    `pushwire, ${f.sessions} sessions, JSON`,
    'WebSocket',
    'Server-Sent Events',
    'SSE / WebSocket',
  ];
  const rows: Row[] = [
    [
      'delivered events/s',
      formatSummary(f.websocket.deliveriesPerSec, formatCount),
      formatSummary(f.sse.deliveriesPerSec, formatCount),
      `${f.rateRatio.toFixed(2)}×${pairRange(f.pairRateRatios)}`,
    ],
    [
      'server CPU µs/delivery',
      formatSummary(f.websocket.cpuUsPerDelivery, fixed(3)),
      formatSummary(f.sse.cpuUsPerDelivery, fixed(3)),
      `${f.cpuRatio.toFixed(2)}×${pairRange(f.pairCpuRatios)}`,
    ],
    [
      'idle RSS per session (KiB)',
      formatSummary(f.websocket.memoryPerSessionKiB, fixed(1)),
      formatSummary(f.sse.memoryPerSessionKiB, fixed(1)),
      `${f.memoryRatio.toFixed(2)}×`,
    ],
    [
      'idle heap per session (KiB)',
      formatSummary(f.websocket.heapPerSessionKiB, fixed(1)),
      formatSummary(f.sse.heapPerSessionKiB, fixed(1)),
      '',
    ],
  ];
  return { header, rows };
}

/** The targets table. */
export function targetRows(results: BenchResults): { header: Row; rows: Row[] } {
  return {
    header: ['target', 'measured (medians)', 'wanted', 'met'],
    rows: results.targets.map((t) => [t.name, t.measured, t.target, t.met ? 'yes' : 'NO']),
  };
}

/** A fixed-width text table. */
export function textTable(table: { header: Row; rows: Row[] }): string {
  const all = [table.header, ...table.rows];
  const widths = table.header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const line = (r: Row): string =>
    r
      .map((cell, i) => (i === 0 ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0)))
      .join('  ');
  return [
    line(table.header),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...table.rows.map(line),
  ].join('\n');
}

/** A markdown table. */
export function markdownTable(table: { header: Row; rows: Row[] }): string {
  const escape = (s: string): string => s.replace(/\|/g, '\\|');
  const line = (r: Row): string => `| ${r.map(escape).join(' | ')} |`;
  const align = `|${table.header.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`;
  return [line(table.header), align, ...table.rows.map(line)].join('\n');
}

/** The environment line every output starts with. */
export function environmentLine(results: BenchResults): string {
  const e = results.environment;
  return `${e.cpuModel}, ${e.cores} cores, ${e.totalMemoryMiB} MiB, Node ${e.node}, ${e.platform}; ${e.date}`;
}

/** The markdown section for the README. */
export function markdownReport(results: BenchResults, command: string): string {
  const parts = [
    `Measured with \`${command}\` on ${environmentLine(results)}.`,
    'Each cell: median (min–max) of interleaved repetitions; servers and clients in separate processes, loopback.',
    '',
    markdownTable(mainRows(results)),
  ];
  const work = workRows(results);
  if (work !== undefined) parts.push('', markdownTable(work));
  const history = historyRows(results);
  if (history !== undefined) parts.push('', markdownTable(history));
  const sse = sseRows(results);
  if (sse !== undefined) parts.push('', markdownTable(sse));
  parts.push(
    '',
    markdownTable(targetRows(results)),
    '',
    '![fan-out chart](bench/results/chart.svg)',
    '',
  );
  return parts.join('\n');
}

// ---------------------------------------------------------------------------
// The chart

const COLORS: Record<Mode, string> = {
  'pushwire-json': '#2563eb',
  'pushwire-msgpack': '#0891b2',
  'pushwire-sse': '#7c3aed',
  socketio: '#dc2626',
  raw: '#6b7280',
};

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

interface Panel {
  title: string;
  /** Per session count, per mode: the summary to draw. */
  groups: Array<{ label: string; bars: Array<{ mode: Mode; s: Summary | undefined }> }>;
  log: boolean;
  format: (n: number) => string;
}

function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function drawPanel(panel: Panel, x0: number, y0: number, width: number, height: number): string {
  const out: string[] = [];
  const left = x0 + 60;
  const right = x0 + width - 10;
  const top = y0 + 30;
  const bottom = y0 + height - 40;
  out.push(
    `<text x="${(left + right) / 2}" y="${y0 + 16}" text-anchor="middle" font-size="14" font-weight="600">${escapeXml(panel.title)}</text>`,
  );
  const values = panel.groups
    .flatMap((g) => g.bars.map((b) => b.s?.max ?? NaN))
    .filter((v) => v > 0);
  const maxValue = values.length === 0 ? 1 : Math.max(...values);
  const minValue =
    values.length === 0
      ? 1
      : Math.min(
          ...panel.groups.flatMap((g) => g.bars.map((b) => b.s?.min ?? NaN)).filter((v) => v > 0),
        );
  let scale: (v: number) => number;
  let ticks: number[];
  if (panel.log) {
    const lo = 10 ** Math.floor(Math.log10(minValue));
    const hi = 10 ** Math.ceil(Math.log10(maxValue * 1.01));
    scale = (v) =>
      bottom -
      ((Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) *
        (bottom - top);
    ticks = [];
    for (let t = lo; t <= hi * 1.0001; t *= 10) ticks.push(t);
  } else {
    const hi = niceMax(maxValue * 1.05);
    scale = (v) => bottom - (v / hi) * (bottom - top);
    ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => f * hi);
  }
  for (const t of ticks) {
    const y = scale(t);
    out.push(`<line x1="${left}" y1="${y}" x2="${right}" y2="${y}" stroke="#e5e7eb"/>`);
    out.push(
      `<text x="${left - 6}" y="${y + 4}" text-anchor="end" font-size="11" fill="#374151">${escapeXml(panel.format(t))}</text>`,
    );
  }
  out.push(`<line x1="${left}" y1="${bottom}" x2="${right}" y2="${bottom}" stroke="#111827"/>`);
  const groupWidth = (right - left) / Math.max(1, panel.groups.length);
  panel.groups.forEach((group, gi) => {
    const gx = left + gi * groupWidth;
    const barWidth = (groupWidth * 0.8) / Math.max(1, group.bars.length);
    group.bars.forEach((bar, bi) => {
      const x = gx + groupWidth * 0.1 + bi * barWidth;
      const s = bar.s;
      if (s === undefined || !(s.median > 0)) return;
      const y = scale(s.median);
      out.push(
        `<rect x="${x + 2}" y="${y}" width="${barWidth - 4}" height="${Math.max(0, bottom - y)}" fill="${COLORS[bar.mode]}"><title>${escapeXml(`${MODE_LABELS[bar.mode]}: ${panel.format(s.median)} (${panel.format(s.min)}–${panel.format(s.max)})`)}</title></rect>`,
      );
      const cx = x + barWidth / 2;
      out.push(
        `<line x1="${cx}" y1="${scale(s.min)}" x2="${cx}" y2="${scale(s.max)}" stroke="#111827" stroke-width="1.5"/>`,
      );
      out.push(
        `<text x="${cx}" y="${Math.min(y, scale(s.max)) - 4}" text-anchor="middle" font-size="10">${escapeXml(panel.format(s.median))}</text>`,
      );
    });
    out.push(
      `<text x="${gx + groupWidth / 2}" y="${bottom + 16}" text-anchor="middle" font-size="12">${escapeXml(group.label)}</text>`,
    );
  });
  return out.join('\n');
}

/** The SVG chart: delivered rate and p99 latency by mode and session count. */
export function chartSvg(results: BenchResults): string {
  const modes = MODES.filter((m) =>
    Object.values(results.throughput).some((t) => t[m] !== undefined),
  );
  const rate: Panel = {
    title: 'Delivered events/s (higher is better)',
    log: false,
    format: formatCount,
    groups: results.sessionCounts.map((n) => ({
      label: `${n} sessions`,
      bars: modes.map((mode) => ({
        mode,
        s: results.throughput[String(n)]?.[mode]?.deliveriesPerSec,
      })),
    })),
  };
  const latency: Panel = {
    title: 'p99 latency per delivery, ms (log), half load',
    log: true,
    format: (n) => (n >= 10 ? n.toFixed(0) : n >= 1 ? n.toFixed(1) : n.toFixed(2)),
    groups: results.sessionCounts.map((n) => ({
      label: `${n} sessions`,
      bars: modes.map((mode) => ({ mode, s: results.latency[String(n)]?.modes[mode]?.p99 })),
    })),
  };
  const width = 960;
  const height = 400;
  const legend = modes
    .map(
      (mode, i) =>
        `<rect x="${70 + i * 200}" y="${height - 22}" width="12" height="12" fill="${COLORS[mode]}"/><text x="${88 + i * 200}" y="${height - 12}" font-size="12">${escapeXml(MODE_LABELS[mode])}</text>`,
    )
    .join('\n');
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    drawPanel(rate, 0, 0, width / 2, height - 40),
    drawPanel(latency, width / 2, 0, width / 2, height - 40),
    legend,
    `<text x="${width - 8}" y="${height - 30}" text-anchor="end" font-size="10" fill="#6b7280">${escapeXml(environmentLine(results))}; bars: median, whiskers: min–max</text>`,
    '</svg>',
    '',
  ].join('\n');
}
