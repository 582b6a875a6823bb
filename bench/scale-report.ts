/**
 * The scale phase's outputs (issue 15): its results' shape, its tables and
 * bench/results/scale.md. Apart from report.ts because the scale phase runs
 * alone (`--phases scale`) and writes files of its own, so that a scale run
 * never overwrites the fan-out figures of the last full run.
 */
import { ALL_MODES, MODE_LABELS, type Mode, type ServerLimits } from './common.js';
import { formatCount, markdownTable, type BenchResults } from './report.js';

/** One mode at one size of the scale phase. */
export interface ScaleRun {
  mode: Mode;
  /** Sessions asked for. */
  size: number;
  /** Sessions that opened (and the server registered). */
  open: number;
  /** Connections that failed; the clients stop after 200 in a row. */
  failed: number;
  /** The first client-side error, as `code: message`. */
  firstError: string | undefined;
  /** The server's file descriptors and accept errors once connecting ended. */
  limits: ServerLimits;
  /** From the first connect to the server registering the last session. */
  connectSeconds: number;
  connectPerSec: number;
  /** The server's RSS after two forced GCs, before and after connecting. */
  rssBeforeMiB: number;
  rssAfterMiB: number;
  /** Idle RSS, V8 heap and external memory per open session, after GC, KiB. */
  rssPerSessionKiB: number;
  heapPerSessionKiB: number;
  /** V8's committed heap per session: heapPerSessionKiB plus the free space of its pages. */
  heapTotalPerSessionKiB: number;
  externalPerSessionKiB: number;
  /**
   * Kernel slab memory per socket, KiB: the machine's slab growth while connecting over twice
   * the sessions (both ends are local). Absent in runs made before it was recorded.
   */
  kernelPerSocketKiB?: number;
  /** At the fan-out sizes: maximum load, then latency at half the raw loop's rate. */
  fanout?: ScaleFanout;
}

/** The fan-out of one scale run, on the sessions that connected. */
export interface ScaleFanout {
  sessions: number;
  deliveriesPerSec: number;
  cpuUsPerDelivery: number;
  systemUsPerDelivery: number;
  /** % of one core. */
  serverCpuPct: number;
  clientCpuPctSum: number;
  clientCpuPctMax: number;
  machineCpuPct: number;
  otherCpuPct: number;
  /** Events/s of the latency window: half the raw loop's per-session rate at this size. */
  latencyRate: number;
  achievedRate: number;
  /** Per delivery, and for the last session of each event, ms. */
  p50: number;
  p99: number;
  lastP50: number;
  lastP99: number;
  incompleteEvents: number;
  latencyServerCpuPct: number;
}

/** Everything the scale phase measured, and how. */
export interface ScaleFigures {
  sizes: number[];
  fanoutSizes: number[];
  /** Client child processes, and the source addresses their sockets are spread over. */
  clients: number;
  localAddresses: string[];
  /** Where the processes ran. */
  pinned: string;
  /** The open-file limit asked for, and the smallest each server and client child got. */
  fdLimitWanted: number;
  fdLimitServer: number;
  fdLimitClients: number;
  /** The machine's 1-minute load average when the phase started and ended (others' work shows). */
  loadAverage?: { start: number; end: number };
  /** What the run's author added by hand (how loaded the machine was, before it was recorded). */
  note?: string;
  runs: ScaleRun[];
}

type Row = [string, ...string[]];

const fixed =
  (digits: number) =>
  (n: number | undefined): string =>
    n !== undefined && Number.isFinite(n) ? n.toFixed(digits) : '–';

/** A run's figure over the raw loop's at the same size, as "1.23×". */
function ratio(
  figures: ScaleFigures,
  run: ScaleRun,
  value: (r: ScaleRun) => number | undefined,
): string {
  const raw = figures.runs.find((r) => r.mode === 'raw' && r.size === run.size);
  const a = value(run);
  const b = raw === undefined ? undefined : value(raw);
  if (a === undefined || b === undefined || !Number.isFinite(a / b) || run.mode === 'raw')
    return '';
  return ` (${(a / b).toFixed(2)}×)`;
}

/**
 * The RSS each session added between the previous size this mode reached and this one, KiB:
 * the slope, without what a process pays once (code, the young generation's pages), which
 * the per-session figure of a small size still carries. What a larger size will cost.
 */
export function marginalRssKiB(figures: ScaleFigures, run: ScaleRun): number {
  const previous = figures.runs
    .filter((r) => r.mode === run.mode && r.open < run.open)
    .sort((a, b) => b.open - a.open)[0];
  if (previous === undefined) return NaN;
  return ((run.rssAfterMiB - previous.rssAfterMiB) * 1024) / (run.open - previous.open);
}

/** The memory and connect table: one row per size and mode. */
export function scaleMemoryRows(figures: ScaleFigures): { header: Row; rows: Row[] } {
  const header: Row = [
    'sessions asked',
    'mode',
    'open',
    'connects/s',
    'RSS KiB/session (× raw)',
    'marginal RSS KiB/session (× raw)',
    'heap KiB/session (× raw)',
    'committed heap KiB/session',
    'kernel slab KiB/socket',
    'server RSS MiB',
    'server fds / limit',
    'what stopped it',
  ];
  const rows: Row[] = [];
  for (const size of figures.sizes) {
    for (const mode of ALL_MODES) {
      const run = figures.runs.find((r) => r.mode === mode && r.size === size);
      if (run === undefined) continue;
      const stopped =
        run.open >= run.size
          ? ''
          : [
              run.firstError ?? '',
              run.limits.serverErrors > 0 ? `server: ${run.limits.firstServerError ?? ''}` : '',
            ]
              .filter((s) => s !== '')
              .join('; ');
      rows.push([
        String(size),
        MODE_LABELS[mode],
        String(run.open),
        formatCount(run.connectPerSec),
        fixed(2)(run.rssPerSessionKiB) + ratio(figures, run, (r) => r.rssPerSessionKiB),
        fixed(2)(marginalRssKiB(figures, run)) +
          ratio(figures, run, (r) => marginalRssKiB(figures, r)),
        fixed(2)(run.heapPerSessionKiB) + ratio(figures, run, (r) => r.heapPerSessionKiB),
        fixed(2)(run.heapTotalPerSessionKiB),
        fixed(2)(run.kernelPerSocketKiB),
        fixed(0)(run.rssAfterMiB),
        `${run.limits.fds} / ${run.limits.fdLimit}`,
        stopped,
      ]);
    }
  }
  return { header, rows };
}

/** The fan-out table: one row per fan-out size and mode, ratios to the raw loop's. */
export function scaleFanoutRows(figures: ScaleFigures): { header: Row; rows: Row[] } | undefined {
  const header: Row = [
    'sessions (open)',
    'mode',
    'delivered/s (× raw)',
    'server CPU µs/delivery (× raw)',
    'server / clients CPU %',
    'latency load events/s',
    'p50 / p99 ms (× raw)',
    'last session p50 / p99 ms (× raw)',
  ];
  const rows: Row[] = [];
  for (const run of figures.runs) {
    const f = run.fanout;
    if (f === undefined) continue;
    rows.push([
      `${run.size} (${f.sessions})`,
      MODE_LABELS[run.mode],
      formatCount(f.deliveriesPerSec) + ratio(figures, run, (r) => r.fanout?.deliveriesPerSec),
      fixed(3)(f.cpuUsPerDelivery) + ratio(figures, run, (r) => r.fanout?.cpuUsPerDelivery),
      `${fixed(0)(f.serverCpuPct)} / ${fixed(0)(f.clientCpuPctSum)}`,
      `${formatCount(f.achievedRate)}`,
      `${fixed(1)(f.p50)} / ${fixed(1)(f.p99)}` + ratio(figures, run, (r) => r.fanout?.p99),
      `${fixed(1)(f.lastP50)} / ${fixed(1)(f.lastP99)}` +
        ratio(figures, run, (r) => r.fanout?.lastP99),
    ]);
  }
  return rows.length === 0 ? undefined : { header, rows };
}

/** bench/results/scale.md. */
export function scaleMarkdown(
  results: BenchResults,
  figures: ScaleFigures,
  command: string,
): string {
  const e = results.environment;
  const parts = [
    `# Scale: idle sessions in one process`,
    '',
    `Measured with \`${command}\` on ${e.cpuModel}, ${e.cores} cores, ${e.totalMemoryMiB} MiB, ` +
      `Node ${e.node}, ${e.platform}; ${e.date}. One repetition; each mode at each size in a ` +
      `fresh server process; ${figures.clients} client processes, sockets spread over ` +
      `${figures.localAddresses[0]}–${figures.localAddresses[figures.localAddresses.length - 1]}; ` +
      `${figures.pinned}; open-file limit asked ${figures.fdLimitWanted}, got ` +
      `${figures.fdLimitServer} (server) and ${figures.fdLimitClients} (clients)` +
      (figures.loadAverage === undefined
        ? '.'
        : `; load average ${fixed(1)(figures.loadAverage.start)} at the start, ${fixed(1)(figures.loadAverage.end)} at the end.`),
    '',
    'Memory: RSS and V8 heap after two forced GCs, after connecting, minus before, per open session; ' +
      'marginal RSS: what each session added since the smaller size (the slope, without one-off costs). ' +
      'Ratios in parentheses are to the raw `ws` loop at the same size, in the same run.',
    '',
    markdownTable(scaleMemoryRows(figures)),
  ];
  if (figures.note !== undefined) parts.push('', figures.note);
  const skipped = figures.sizes.filter((size) => !figures.runs.some((r) => r.size === size));
  if (skipped.length > 0) {
    parts.push(
      '',
      `Not attempted: ${skipped.join(', ')} sessions (every mode had stopped short of a smaller size).`,
    );
  }
  const fanout = scaleFanoutRows(figures);
  if (fanout !== undefined) {
    parts.push(
      '',
      'Fan-out on the sessions that connected: maximum load, then latency at half the raw ' +
        "loop's per-session rate at that size; CPU % of one core (clients: all children together).",
      '',
      markdownTable(fanout),
    );
  }
  parts.push('');
  return parts.join('\n');
}
