/**
 * What the benchmark's processes share: the modes, the IPC messages between
 * the orchestrator (run.ts), the server children (server.ts) and the client
 * children (client.ts), the entity every mode sends, the clock and the
 * latency histogram.
 */

/** The servers under test in every phase (the default of `--modes`). */
export const MODES = ['pushwire-json', 'pushwire-msgpack', 'socketio', 'raw'] as const;
/**
 * Every mode: the default ones, and pushwire's Server-Sent Events (the same pushwire server as
 * JSON, read as event streams), which only the sse phase runs, against pushwire JSON.
 */
export const ALL_MODES = [...MODES, 'pushwire-sse'] as const;
/** One server under test. */
export type Mode = (typeof ALL_MODES)[number];

/** Human names of the modes, for tables and the chart. */
export const MODE_LABELS: Record<Mode, string> = {
  'pushwire-json': 'pushwire JSON',
  'pushwire-msgpack': 'pushwire MessagePack',
  socketio: 'socket.io 4',
  raw: 'raw ws loop',
  'pushwire-sse': 'pushwire SSE',
};

/**
 * Per-session work on the pushwire server (JSON): `none` (the baseline),
 * `config` (every session sent a push config that passes), `dispatch` (a
 * synchronous `shouldDispatch` plugin), `config+dispatch` (both) and
 * `filter` (every session has a two-comparison filter that matches).
 */
export const VARIANTS = [
  'none',
  'config',
  'dispatch',
  'config+dispatch',
  'filter',
  'tracing-unsampled',
] as const;
/** One per-session work variant. */
export type Variant = (typeof VARIANTS)[number];

/** What a client speaks: pushwire or socket.io over a WebSocket, or an SSE stream (GET). */
export type ClientProtocol = 'push' | 'socketio' | 'sse';

/** Everything a server child needs, passed as JSON in its first argument. */
export interface ServerSpec {
  mode: Mode;
  variant: Variant;
  /** Events are published in bursts of this many per event-loop turn under maximum load. */
  batch: number;
  /** A session counts as backlogged past this many bytes waiting in the server (bytes). */
  highWater: number;
  /**
   * pushwire only: LocalPubSub keeps a history of this many events (`history: { maxEvents }`,
   * so events carry positions and sessions may resume); off when absent.
   */
  historyMaxEvents?: number;
}

/** Orchestrator → server child. */
export type ServerCommand =
  | { type: 'memory' }
  | { type: 'snapshot' }
  | { type: 'sessions' }
  /** Maximum load: bursts of `batch` events per turn while few sessions are backlogged. */
  | { type: 'load-max' }
  /** Fixed load: `rate` events per second, evenly paced. */
  | { type: 'load-rate'; rate: number }
  | { type: 'stop-load' }
  /** Start sampling RSS every `intervalMs`. */
  | { type: 'rss-sampling'; intervalMs: number }
  | { type: 'rss-samples' }
  /** Writes a V8 heap snapshot after GC (for finding what an idle session keeps alive). */
  | { type: 'heap-snapshot'; path: string }
  /** pushwire with history: publishes `count` events and waits until the history holds them. */
  | { type: 'fill-history'; count: number }
  /** The scale phase: file descriptors open and allowed, and what accept() refused. */
  | { type: 'limits' };

/** Server child → orchestrator. */
export type ServerReply =
  | { type: 'ready'; port: number; path: string }
  | {
      type: 'memory';
      rss: number;
      heapUsed: number;
      /** V8's committed heap: heapUsed plus free space in its pages (fragmentation, slack). */
      heapTotal: number;
      external: number;
    }
  | { type: 'snapshot'; snapshot: ServerSnapshot }
  | { type: 'sessions'; count: number }
  | { type: 'load-started' }
  | { type: 'load-stopped'; lastSeq: number; published: number }
  | { type: 'rss-sampling' }
  | { type: 'rss-samples'; samples: Array<[number, number]> }
  | { type: 'heap-snapshot'; path: string }
  /** `since`: the position of the first event filled, so a resume from it replays the others. */
  | { type: 'history-filled'; since: string; stored: number }
  | { type: 'limits'; limits: ServerLimits }
  | { type: 'error'; message: string };

/** What bounds a server child's sessions, read by the scale phase when connections fail. */
export interface ServerLimits {
  /** File descriptors open now (/proc/self/fd; -1 off Linux). */
  fds: number;
  /** The soft limit on open files (RLIMIT_NOFILE; -1 when unknown). */
  fdLimit: number;
  /** Errors the listening server reported (accept() failing: EMFILE, ENFILE…). */
  serverErrors: number;
  /** The first of them, as `code: message`. */
  firstServerError: string | undefined;
}

/** Counters of a server child at one instant. */
export interface ServerSnapshot {
  /** process.cpuUsage() user + system, µs. */
  cpuUs: number;
  /** process.cpuUsage() system alone, µs: the kernel's share (writes, loopback TCP). */
  cpuSystemUs: number;
  /** The shared clock, ms. */
  timeMs: number;
  rss: number;
  /** Events published so far. */
  published: number;
  /** The sequence number the next event will carry. */
  nextSeq: number;
  /** Events the server dropped for slow consumers (pushwire's counter; 0 for others). */
  dropped: number;
  /** Turns in which the load generator waited for backlogged sessions. */
  backlogWaits: number;
}

/** Orchestrator → client child. */
export type ClientCommand =
  | {
      type: 'connect';
      port: number;
      path: string;
      protocol: ClientProtocol;
      count: number;
      /** Extra request headers (e.g. `Accept: application/msgpack`). */
      headers: Record<string, string>;
      /** A push config (JSON text) to send once open, or undefined. */
      config: string | undefined;
      /** How many of this child's sessions never read (slow consumers). */
      slow: number;
      /** Connections attempted at once. */
      concurrency: number;
      /**
       * Source addresses to bind sockets to, in turn (`localAddress`): loopback clients run
       * out of ephemeral ports near 28,000 per source address. Absent: the system's choice.
       */
      localAddresses?: string[];
      /** Give up connecting after this many failures in a row (the server's limit is reached). */
      stopAfterFailures?: number;
    }
  | { type: 'snapshot' }
  /** Record latency of events whose sequence number is at least `fromSeq`. */
  | { type: 'latency-start'; fromSeq: number }
  | { type: 'latency-report' }
  | { type: 'close' };

/** Client child → orchestrator. */
export type ClientReply =
  | { type: 'connected'; open: number; failed: number; firstError: string | undefined }
  | { type: 'snapshot'; snapshot: ClientSnapshot }
  | { type: 'latency-started' }
  | { type: 'latency-report'; report: LatencyReport }
  | { type: 'closed' };

/** Counters of a client child at one instant. */
export interface ClientSnapshot {
  /** Events received by this child's reading sessions since they connected. */
  events: number;
  /** process.cpuUsage() user + system, µs. */
  cpuUs: number;
  /** The shared clock, ms. */
  timeMs: number;
  /** Sessions open and reading. */
  reading: number;
}

/** What a client child recorded while latency recording was on. */
export interface LatencyReport {
  /** Sparse histogram of per-delivery latency: [bucket index, count]. */
  buckets: Array<[number, number]>;
  /** Per event: [sequence number, the largest latency among this child's sessions, µs, sessions that got it]. */
  perEvent: Array<[number, number, number]>;
  /** Deliveries recorded. */
  deliveries: number;
}

// ---------------------------------------------------------------------------
// The clock

/**
 * Now on the shared clock, in milliseconds. process.hrtime reads
 * CLOCK_MONOTONIC, which on Linux is one clock for every process of the
 * machine, with nanosecond resolution; Date.now() is too coarse for
 * sub-millisecond latencies, and performance.timeOrigin is taken from the
 * wall clock at each process's start, so two processes can disagree by
 * whatever the wall clock was slewed between their starts.
 */
export function nowMs(): number {
  const [s, ns] = process.hrtime();
  return s * 1e3 + ns / 1e6;
}

/** Now on the shared clock, in whole microseconds (what the entity carries). */
export function nowUs(): number {
  const [s, ns] = process.hrtime();
  return s * 1e6 + Math.floor(ns / 1e3);
}

// ---------------------------------------------------------------------------
// The entity

/**
 * The marker in front of the sequence number and send time inside every
 * entity: clients find it with one Buffer#indexOf, in JSON and MessagePack
 * alike (a MessagePack string holds its UTF-8 bytes as they are).
 */
export const MARK = '~pw~';
const SEQ_DIGITS = 10;
const TIME_DIGITS = 16;
/** Bytes of the marker field's value: MARK, sequence, '|', send time in µs. */
export const MARK_VALUE_LENGTH = MARK.length + SEQ_DIGITS + 1 + TIME_DIGITS;
/** The JSON size of every entity, in bytes. */
export const ENTITY_BYTES = 200;

/** The entity shape: what a task tracker would push. The filter variant matches it. */
export interface BenchEntity {
  ID: string;
  name: string;
  status: string;
  priority: number;
  mark: string;
  description: string;
}

/** The filter of the `filter` variant: two comparisons that the entity matches. */
export const BENCH_FILTER = 'priority > 2 and status == "open"';

function padding(): string {
  const probe: BenchEntity = {
    ID: '5f3c9a2e7b1d4c6a8e0f2b3d',
    name: 'Quarterly report',
    status: 'open',
    priority: 5,
    mark: MARK + '0'.repeat(MARK_VALUE_LENGTH - MARK.length),
    description: '',
  };
  const missing = ENTITY_BYTES - JSON.stringify(probe).length;
  if (missing < 0) throw new Error('the entity template is larger than ENTITY_BYTES');
  return 'x'.repeat(missing);
}
const DESCRIPTION = padding();

/** The entity of event `seq`, stamped with the send time (µs on the shared clock). */
export function makeEntity(seq: number, sentUs: number): BenchEntity {
  return {
    ID: '5f3c9a2e7b1d4c6a8e0f2b3d',
    name: 'Quarterly report',
    status: 'open',
    priority: 5,
    mark:
      MARK +
      String(seq).padStart(SEQ_DIGITS, '0') +
      '|' +
      String(sentUs).padStart(TIME_DIGITS, '0'),
    description: DESCRIPTION,
  };
}

/** Reads `digits` ASCII digits at `offset`; -1 when one is not a digit. */
function readDigits(buf: Uint8Array, offset: number, digits: number): number {
  let value = 0;
  for (let i = 0; i < digits; i++) {
    const c = (buf[offset + i] ?? 0) - 48;
    if (c < 0 || c > 9) return -1;
    value = value * 10 + c;
  }
  return value;
}

/**
 * Finds the marker in a frame payload (between `start` and `end`) and
 * returns its sequence number and send time, or undefined.
 */
export function readMark(
  buf: Buffer,
  start: number,
  end: number,
  mark: Buffer,
): { seq: number; sentUs: number } | undefined {
  const at = buf.indexOf(mark, start);
  if (at === -1 || at + MARK_VALUE_LENGTH > end) return undefined;
  const seq = readDigits(buf, at + MARK.length, SEQ_DIGITS);
  const sentUs = readDigits(buf, at + MARK.length + SEQ_DIGITS + 1, TIME_DIGITS);
  if (seq < 0 || sentUs < 0) return undefined;
  return { seq, sentUs };
}

// ---------------------------------------------------------------------------
// The latency histogram: exact below 1,024 µs, then 512 buckets per power of
// two (0.2% precision), so every process records in O(1) and they merge by sum.

const EXACT = 1024;
const SUB_BITS = 9;
const SUB = 1 << SUB_BITS;
/** Buckets of a histogram: enough for latencies up to 2^31 µs (35 minutes). */
export const HISTOGRAM_BUCKETS = EXACT + (31 - 10) * SUB;

/** The bucket of a latency in µs. */
export function bucketOf(us: number): number {
  if (us < EXACT) return us < 0 ? 0 : Math.floor(us);
  const v = Math.min(Math.floor(us), 0x7fffffff);
  const k = 31 - Math.clz32(v);
  return EXACT + (k - 10) * SUB + ((v >>> (k - SUB_BITS)) & (SUB - 1));
}

/** The middle of a bucket, in µs. */
export function bucketValue(index: number): number {
  if (index < EXACT) return index;
  const k = 10 + Math.floor((index - EXACT) / SUB);
  const sub = (index - EXACT) % SUB;
  const width = 2 ** (k - SUB_BITS);
  return (SUB + sub) * width + width / 2;
}

/** The value at quantile `q` (0–1) of a sparse histogram, in µs; NaN when empty. */
export function histogramQuantile(buckets: ReadonlyMap<number, number>, q: number): number {
  let total = 0;
  for (const count of buckets.values()) total += count;
  if (total === 0) return NaN;
  const rank = Math.ceil(q * total);
  let seen = 0;
  for (const index of [...buckets.keys()].sort((a, b) => a - b)) {
    seen += buckets.get(index) ?? 0;
    if (seen >= rank) return bucketValue(index);
  }
  return NaN;
}

/** The value at quantile `q` (0–1) of a list of numbers; NaN when empty. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] as number;
}

/** Sends a message to the parent process; throws when there is no IPC channel. */
export function toParent(message: ServerReply | ClientReply): void {
  if (process.send === undefined)
    throw new Error('this process must be started with an IPC channel');
  process.send(message);
}
