/**
 * The benchmark's command line: its flags, their defaults, and the smoke
 * run's smaller ones. Apart from the orchestration so that the phases read
 * one typed {@link Options}, never argv.
 */
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ALL_MODES, MODES, type Mode } from './common.js';

/** What `--help` prints. */
export const USAGE = `Usage: tsx bench/run.ts [flags]

  --smoke               tiny run for CI: 50 sessions, 1 repetition, short windows
  --sessions LIST       session counts, comma-separated (default 1000,5000)
  --reps N              interleaved repetitions of every figure (default 3)
  --warmup S            seconds of load before counting (default 1)
  --duration S          seconds counted per throughput measurement (default 2)
  --latency-duration S  seconds recorded per latency measurement (default 2)
  --slow-duration S     seconds counted per slow-consumer measurement (default 3)
  --clients N           client child processes (default 2)
  --batch N             events per burst (per event-loop turn) at maximum load (default 10)
  --high-water BYTES    a session is backlogged past this many bytes waiting (default 65536)
  --modes LIST          modes to run (default ${MODES.join(',')})
  --phases LIST         throughput,latency,work,slow,history,sse,scale (default all but scale;
                        --smoke: all, scale at 1000 sessions)
  --scale-sizes LIST    idle sessions of the scale phase (default 10000,50000,100000)
  --scale-fanout LIST   of those, the sizes also loaded (fan-out, latency) (default 10000,50000)
  --work-sessions N     sessions of the per-session work, slow and history runs (default: first of --sessions)
  --sse-sessions N      sessions of the sse phase, each transport (default 1000; --smoke: 50)
  --replay-events N     events replayed to one resuming session in the history phase (default 10000)
  --profile             run servers with --cpu-prof, profiles in bench/results/profiles/
  --out DIR             where to write results (default bench/results; --smoke: bench/results/smoke)
  --render FILE         measure nothing: rebuild the table, latest.md and chart.svg from a latest.json
  --help`;

/** The phases of a run, in the order they run. */
export const PHASES = ['throughput', 'latency', 'work', 'slow', 'history', 'sse', 'scale'] as const;
/** One phase of a run (`--phases`). */
export type Phase = (typeof PHASES)[number];

/** Every flag, resolved: what one run measures, and for how long. */
export interface Options {
  smoke: boolean;
  sessions: number[];
  reps: number;
  warmupS: number;
  durationS: number;
  latencyDurationS: number;
  slowDurationS: number;
  clients: number;
  batch: number;
  highWater: number;
  modes: Mode[];
  phases: Phase[];
  workSessions: number;
  /** Sessions of the sse phase (SSE against WebSocket). */
  sseSessions: number;
  /** Events replayed to the resuming session of the history phase. */
  replayEvents: number;
  /** Idle sessions of the scale phase, ascending. */
  scaleSizes: number[];
  /** The scale sizes at which the fan-out is also measured. */
  scaleFanout: number[];
  profile: boolean;
  out: string;
  /** A latest.json to render again instead of measuring. */
  render: string | undefined;
}

function list(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function positive(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number`);
  return n;
}

/**
 * Reads the flags (prints the usage and exits on `--help`). Throws on an
 * unknown flag, mode or phase, or a count that is not a positive number.
 */
export function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      smoke: { type: 'boolean', default: false },
      sessions: { type: 'string' },
      reps: { type: 'string' },
      warmup: { type: 'string' },
      duration: { type: 'string' },
      'latency-duration': { type: 'string' },
      'slow-duration': { type: 'string' },
      clients: { type: 'string' },
      batch: { type: 'string' },
      'high-water': { type: 'string' },
      modes: { type: 'string' },
      phases: { type: 'string' },
      'work-sessions': { type: 'string' },
      'replay-events': { type: 'string' },
      'sse-sessions': { type: 'string' },
      'scale-sizes': { type: 'string' },
      'scale-fanout': { type: 'string' },
      profile: { type: 'boolean', default: false },
      out: { type: 'string' },
      render: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const smoke = values.smoke === true;
  const sessions = values.sessions
    ? list(values.sessions).map((s) => positive('sessions', s, 0))
    : smoke
      ? [50]
      : [1000, 5000];
  const modes = (values.modes ? list(values.modes) : [...MODES]) as Mode[];
  for (const m of modes) if (!ALL_MODES.includes(m)) throw new Error(`unknown mode ${m}`);
  // The scale phase holds up to 100,000 sessions for minutes: only when asked for, or in the
  // smoke run at a size that takes seconds (so that it cannot rot).
  const phases = (
    values.phases ? list(values.phases) : PHASES.filter((p) => smoke || p !== 'scale')
  ) as Phase[];
  const sizes = (name: string, value: string | undefined, fallback: number[]): number[] =>
    (value ? list(value).map((s) => Math.round(positive(name, s, 0))) : fallback).sort(
      (a, b) => a - b,
    );
  const scaleSizes = sizes(
    'scale-sizes',
    values['scale-sizes'],
    smoke ? [1000] : [10_000, 50_000, 100_000],
  );
  for (const p of phases) if (!PHASES.includes(p)) throw new Error(`unknown phase ${p}`);
  return {
    smoke,
    sessions,
    reps: Math.round(positive('reps', values.reps, smoke ? 1 : 3)),
    warmupS: positive('warmup', values.warmup, smoke ? 0.3 : 1),
    durationS: positive('duration', values.duration, smoke ? 0.7 : 2),
    latencyDurationS: positive('latency-duration', values['latency-duration'], smoke ? 0.7 : 2),
    slowDurationS: positive('slow-duration', values['slow-duration'], smoke ? 0.7 : 3),
    clients: Math.round(positive('clients', values.clients, 2)),
    batch: Math.round(positive('batch', values.batch, 10)),
    highWater: Math.round(positive('high-water', values['high-water'], 65536)),
    modes,
    phases,
    workSessions: Math.round(
      positive('work-sessions', values['work-sessions'], sessions[0] ?? 1000),
    ),
    sseSessions: Math.round(
      positive('sse-sessions', values['sse-sessions'], smoke ? (sessions[0] ?? 50) : 1000),
    ),
    replayEvents: Math.round(positive('replay-events', values['replay-events'], 10_000)),
    scaleSizes,
    scaleFanout: sizes('scale-fanout', values['scale-fanout'], smoke ? [1000] : [10_000, 50_000]),
    profile: values.profile === true,
    // A smoke run never overwrites the full run's figures (the ones the README shows).
    out:
      values.out ??
      fileURLToPath(new URL(smoke ? './results/smoke' : './results', import.meta.url)),
    render: values.render,
  };
}
