/**
 * The fan-out benchmark (issue 7): pushwire (LocalPubSub; JSON and
 * MessagePack) against socket.io 4 and a raw `ws` loop, in one run,
 * interleaved (A, B, C, D, then D, C, B, A), with the same clients and load.
 *
 *   npm run bench                 # the full run, ~10 minutes on 2 cores
 *   npm run bench:smoke           # 50 sessions, 1 repetition: CI's check that it still runs
 *   tsx bench/run.ts --help       # every flag
 *
 * Each measurement starts a fresh server child (one process per mode, run
 * with --expose-gc) and has the long-lived client children (raw TCP
 * WebSocket clients, over loopback) connect to it. Figures are medians
 * and min–max of the repetitions; they are printed as one table and
 * written to bench/results/latest.json, latest.md and chart.svg.
 *
 * Targets are reported, never asserted: the exit status is non-zero only
 * when something broke (a child crashed, sessions failed to connect, a
 * mode delivered nothing).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, platform, release, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  BENCH_FILTER,
  histogramQuantile,
  MODE_LABELS,
  MODES,
  quantile,
  VARIANTS,
  type ClientCommand,
  type ClientProtocol,
  type ClientReply,
  type ClientSnapshot,
  type Mode,
  type ServerCommand,
  type ServerReply,
  type ServerSnapshot,
  type ServerSpec,
  type Variant,
} from './common.js';
import {
  chartSvg,
  environmentLine,
  formatCount,
  mainRows,
  markdownReport,
  summarize,
  targetRows,
  textTable,
  workRows,
  type BenchResults,
  type LatencyFigures,
  type SlowFigures,
  type Summary,
  type TargetCheck,
  type ThroughputFigures,
  type WorkFigures,
} from './report.js';

const USAGE = `Usage: tsx bench/run.ts [flags]

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
  --phases LIST         throughput,latency,work,slow (default all)
  --work-sessions N     sessions of the per-session work and slow runs (default: first of --sessions)
  --profile             run servers with --cpu-prof, profiles in bench/results/profiles/
  --out DIR             where to write results (default bench/results; --smoke: bench/results/smoke)
  --render FILE         measure nothing: rebuild the table, latest.md and chart.svg from a latest.json
  --help`;

/**
 * The order of one repetition: as given, reversed every other repetition (A B C D, D C B A…).
 * Why: a measurement may inherit something from the one before it (the previous server's
 * sockets closing in the kernel, the clients' state); in a fixed order the same mode would
 * always pay for the same neighbour. (Checked for the per-session-work variants: their costs
 * came out the same in both orders.)
 */
function inRepOrder<T>(items: readonly T[], rep: number): readonly T[] {
  return rep % 2 === 0 ? items : [...items].reverse();
}

const PHASES = ['throughput', 'latency', 'work', 'slow'] as const;
type Phase = (typeof PHASES)[number];

interface Options {
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

function parseOptions(argv: string[]): Options {
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
  for (const m of modes) if (!MODES.includes(m)) throw new Error(`unknown mode ${m}`);
  const phases = (values.phases ? list(values.phases) : [...PHASES]) as Phase[];
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
    profile: values.profile === true,
    // A smoke run never overwrites the full run's figures (the ones the README shows).
    out:
      values.out ??
      fileURLToPath(new URL(smoke ? './results/smoke' : './results', import.meta.url)),
    render: values.render,
  };
}

/** Jiffies of the whole machine, busy and total, or undefined off Linux. */
function machineJiffies(): { busy: number; total: number } | undefined {
  try {
    const line = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0] ?? '';
    const [, user, nice, system, idle, iowait, irq, softirq, steal] = line
      .trim()
      .split(/\s+/)
      .map(Number);
    const busy = (user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0);
    return { busy, total: busy + (idle ?? 0) + (iowait ?? 0) + (steal ?? 0) };
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Children

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

const runStarted = Date.now();
/** A progress line, stamped with the time since the run started (so slow phases show). */
function progress(line: string): void {
  const s = Math.round((Date.now() - runStarted) / 1000);
  console.log(
    `[${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}] ${line}`,
  );
}

/** Every child still running, so an interrupted run does not leave servers or clients behind. */
const running = new Set<ChildProcess>();
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    for (const child of running) child.kill('SIGKILL');
    process.exit(130);
  });
}

/** A child process spoken to over IPC: send a command, await the reply of a given type. */
class Child<Command, Reply extends { type: string }> {
  readonly process: ChildProcess;
  readonly #inbox: Reply[] = [];
  readonly #waiters: Array<{
    type: string;
    resolve: (reply: Reply) => void;
    reject: (error: Error) => void;
    timer: NodeJS.Timeout;
  }> = [];
  #gone: Error | undefined;

  constructor(
    readonly name: string,
    file: string,
    args: string[],
    execArgv: string[],
  ) {
    // From the repository root, where `--import tsx` resolves, wherever the run was started.
    this.process = fork(file, args, {
      cwd: REPO_ROOT,
      execArgv,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.process.on('message', (reply: Reply) => {
      if (reply.type === 'error') {
        this.#fail(new Error(`${name}: ${(reply as unknown as { message: string }).message}`));
        return;
      }
      const i = this.#waiters.findIndex((w) => w.type === reply.type);
      if (i === -1) {
        this.#inbox.push(reply);
        return;
      }
      const [waiter] = this.#waiters.splice(i, 1);
      if (waiter === undefined) return;
      clearTimeout(waiter.timer);
      waiter.resolve(reply);
    });
    running.add(this.process);
    this.process.on('exit', (code, signal) => {
      running.delete(this.process);
      this.#fail(new Error(`${name} exited (${code ?? signal})`));
    });
  }

  #fail(error: Error): void {
    this.#gone ??= error;
    for (const w of this.#waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(error);
    }
  }

  /** The next reply of `type` (one already received counts). */
  expect<T extends Reply['type']>(
    type: T,
    timeoutMs: number,
  ): Promise<Extract<Reply, { type: T }>> {
    const i = this.#inbox.findIndex((r) => r.type === type);
    if (i !== -1)
      return Promise.resolve(this.#inbox.splice(i, 1)[0] as Extract<Reply, { type: T }>);
    if (this.#gone) return Promise.reject(this.#gone);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const at = this.#waiters.findIndex((w) => w.timer === timer);
        if (at !== -1) this.#waiters.splice(at, 1);
        reject(new Error(`${this.name}: no '${type}' within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.push({ type, resolve: resolve as (r: Reply) => void, reject, timer });
    });
  }

  /** Sends a command and awaits its reply. */
  request<T extends Reply['type']>(
    command: Command,
    type: T,
    timeoutMs = 30_000,
  ): Promise<Extract<Reply, { type: T }>> {
    const reply = this.expect(type, timeoutMs);
    if (this.#gone === undefined) this.process.send(command as object);
    return reply;
  }

  /** Closes the channel (the child exits by itself), then kills it if it lingers. */
  async stop(): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.process.once('exit', () => resolve()));
    if (this.process.connected) this.process.disconnect();
    const timer = setTimeout(() => this.process.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

type ServerChild = Child<ServerCommand, ServerReply>;
type ClientChild = Child<ClientCommand, ClientReply>;

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
const SERVER_FILE = fileURLToPath(new URL('./server.ts', import.meta.url));
const CLIENT_FILE = fileURLToPath(new URL('./client.ts', import.meta.url));

// ---------------------------------------------------------------------------
// One measurement

interface Setup {
  mode: Mode;
  sessions: number;
  variant: Variant;
  /** Sessions that never read. */
  slow: number;
  /** Measure idle memory before the load. */
  memory: boolean;
}

class Bench {
  readonly failures: string[] = [];
  #profileCount = 0;

  constructor(
    readonly options: Options,
    readonly clients: ClientChild[],
  ) {}

  async startServer(setup: Setup): Promise<{ server: ServerChild; port: number; path: string }> {
    const spec: ServerSpec = {
      mode: setup.mode,
      variant: setup.variant,
      batch: this.options.batch,
      highWater: this.options.highWater,
    };
    const execArgv = ['--import', 'tsx', '--expose-gc'];
    if (this.options.profile) {
      // One directory per measurement: the loader's worker thread writes a profile of its own
      // (the main thread's is the larger file).
      const name = `${String(++this.#profileCount).padStart(3, '0')}-${setup.mode}-${setup.variant}-${setup.sessions}${setup.slow > 0 ? '-slow' : ''}`;
      execArgv.push('--cpu-prof', `--cpu-prof-dir=${this.options.out}/profiles/${name}`);
    }
    const server: ServerChild = new Child(
      `server ${setup.mode}`,
      SERVER_FILE,
      [JSON.stringify(spec)],
      execArgv,
    );
    const ready = await server.expect('ready', 60_000);
    return { server, port: ready.port, path: ready.path };
  }

  /** Connects `setup.sessions` sessions spread over the client children; returns how many opened. */
  async connect(setup: Setup, server: ServerChild, port: number, path: string): Promise<number> {
    const protocol: ClientProtocol = setup.mode === 'socketio' ? 'socketio' : 'push';
    const headers: Record<string, string> =
      setup.mode === 'pushwire-msgpack' ? { Accept: 'application/msgpack' } : {};
    const config =
      setup.variant === 'config' || setup.variant === 'config+dispatch'
        ? JSON.stringify({ identities: { task: ['create', 'update'] } })
        : setup.variant === 'filter'
          ? JSON.stringify({ identities: { task: [] }, filters: { task: BENCH_FILTER } })
          : undefined;
    const n = this.clients.length;
    const replies = await Promise.all(
      this.clients.map((client, i) => {
        const count = Math.floor(setup.sessions / n) + (i < setup.sessions % n ? 1 : 0);
        const slow = Math.floor(setup.slow / n) + (i < setup.slow % n ? 1 : 0);
        return client.request(
          {
            type: 'connect',
            port,
            path,
            protocol,
            count,
            headers,
            config,
            slow,
            concurrency: 64,
          },
          'connected',
          180_000,
        );
      }),
    );
    const open = replies.reduce((sum, r) => sum + r.open, 0);
    const failed = replies.reduce((sum, r) => sum + r.failed, 0);
    if (failed > 0) {
      this.failures.push(
        `${setup.mode}/${setup.variant}, ${setup.sessions} sessions: ${failed} sessions failed to connect (${replies.find((r) => r.firstError)?.firstError})`,
      );
    }
    // The server must have registered every one before load starts.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const { count } = await server.request({ type: 'sessions' }, 'sessions');
      if (count >= open) break;
      if (Date.now() > deadline) {
        this.failures.push(`${setup.mode}: the server registered ${count} of ${open} sessions`);
        break;
      }
      await sleep(50);
    }
    return open;
  }

  async snapshots(server: ServerChild): Promise<Snapshots> {
    const machine = machineJiffies();
    const [s, ...c] = await Promise.all([
      server.request({ type: 'snapshot' }, 'snapshot'),
      ...this.clients.map((client) => client.request({ type: 'snapshot' }, 'snapshot')),
    ]);
    return {
      server: (s as Extract<ServerReply, { type: 'snapshot' }>).snapshot,
      clients: c.map((r) => (r as Extract<ClientReply, { type: 'snapshot' }>).snapshot),
      machine,
    };
  }

  async teardown(server: ServerChild): Promise<void> {
    await Promise.all(this.clients.map((c) => c.request({ type: 'close' }, 'closed')));
    await server.stop();
  }

  /**
   * Runs one measurement; a failure (a timeout, a crashed server) is recorded and the run goes
   * on without that sample, so one bad measurement does not lose the others.
   */
  async safely<T>(setup: Setup, measure: () => Promise<T>): Promise<T | undefined> {
    try {
      return await measure();
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      this.failures.push(`${this.label(setup)}: ${message}`);
      progress(`${this.label(setup)}: FAILED: ${message}`);
      return undefined;
    }
  }

  label(setup: Setup): string {
    const variant = setup.variant === 'none' ? '' : ` +${setup.variant}`;
    const slow = setup.slow > 0 ? `, ${setup.slow} slow` : '';
    return `${MODE_LABELS[setup.mode]}${variant}, ${setup.sessions} sessions${slow}`;
  }

  /** Maximum load: delivered rate, CPU, idle memory; or, with slow consumers, RSS over time. */
  async throughput(setup: Setup, durationS: number): Promise<ThroughputSample> {
    const { server, port, path } = await this.startServer(setup);
    try {
      const before = setup.memory ? await server.request({ type: 'memory' }, 'memory') : undefined;
      const open = await this.connect(setup, server, port, path);
      let memoryPerSessionKiB = NaN;
      let heapPerSessionKiB = NaN;
      if (before !== undefined) {
        await sleep(300);
        const after = await server.request({ type: 'memory' }, 'memory');
        memoryPerSessionKiB = (after.rss - before.rss) / 1024 / open;
        heapPerSessionKiB = (after.heapUsed - before.heapUsed) / 1024 / open;
      }
      if (setup.slow > 0) {
        await server.request({ type: 'rss-sampling', intervalMs: 250 }, 'rss-sampling');
      }
      await server.request({ type: 'load-max' }, 'load-started');
      await sleep(this.options.warmupS * 1000);
      const s0 = await this.snapshots(server);
      await sleep(durationS * 1000);
      const s1 = await this.snapshots(server);
      const rss =
        setup.slow > 0
          ? (await server.request({ type: 'rss-samples' }, 'rss-samples')).samples
          : [];
      await server.request({ type: 'stop-load' }, 'load-stopped');
      const sample = throughputSample(s0, s1, open - setup.slow, rss);
      sample.memoryPerSessionKiB = memoryPerSessionKiB;
      sample.heapPerSessionKiB = heapPerSessionKiB;
      if (!(sample.deliveries > 0)) this.failures.push(`${this.label(setup)}: no deliveries`);
      progress(
        `${this.label(setup)}: ${formatCount(sample.deliveriesPerSec)} deliveries/s, ` +
          `${sample.cpuUsPerDelivery.toFixed(3)} µs CPU/delivery (${sample.systemUsPerDelivery.toFixed(3)} system), server ${sample.serverCpuPct.toFixed(0)}%, ` +
          `clients ≤${sample.clientCpuPctMax.toFixed(0)}%, machine ${sample.machineCpuPct.toFixed(0)}% ` +
          `(other ${sample.otherCpuPct.toFixed(0)}%), ${sample.backlogWaits} backlog waits` +
          (setup.memory ? `, ${memoryPerSessionKiB.toFixed(1)} KiB/session` : '') +
          (sample.dropped > 0 ? `, ${sample.dropped} dropped` : ''),
      );
      return sample;
    } finally {
      await this.teardown(server);
    }
  }

  /** Fixed load: per-delivery and last-session latency. */
  async latency(setup: Setup, rate: number): Promise<LatencySample> {
    const { server, port, path } = await this.startServer(setup);
    try {
      const open = await this.connect(setup, server, port, path);
      await server.request({ type: 'load-rate', rate }, 'load-started');
      await sleep(this.options.warmupS * 1000);
      const s0 = await this.snapshots(server);
      // Recording starts with events published a little later, so every client is recording
      // by the time they arrive.
      const fromSeq = s0.server.nextSeq + Math.ceil(rate * 0.1);
      await Promise.all(
        this.clients.map((c) => c.request({ type: 'latency-start', fromSeq }, 'latency-started')),
      );
      await sleep(this.options.latencyDurationS * 1000);
      const s1 = await this.snapshots(server);
      const stopped = await server.request({ type: 'stop-load' }, 'load-stopped');
      await sleep(500);
      const reports = await Promise.all(
        this.clients.map((c) => c.request({ type: 'latency-report' }, 'latency-report')),
      );
      const buckets = new Map<number, number>();
      const perEvent = new Map<number, { max: number; sessions: number }>();
      let deliveries = 0;
      for (const { report } of reports) {
        deliveries += report.deliveries;
        for (const [i, count] of report.buckets) buckets.set(i, (buckets.get(i) ?? 0) + count);
        for (const [seq, max, sessions] of report.perEvent) {
          if (seq < fromSeq || seq > stopped.lastSeq) continue;
          const e = perEvent.get(seq);
          if (e === undefined) perEvent.set(seq, { max, sessions });
          else {
            e.sessions += sessions;
            e.max = Math.max(e.max, max);
          }
        }
      }
      const expectedEvents = Math.max(0, stopped.lastSeq - fromSeq + 1);
      let incomplete = expectedEvents - perEvent.size;
      const lastLatencies: number[] = [];
      for (const e of perEvent.values()) {
        if (e.sessions < open) incomplete++;
        lastLatencies.push(e.max);
      }
      const t = throughputSample(s0, s1, open, []);
      const sample: LatencySample = {
        p50: histogramQuantile(buckets, 0.5) / 1000,
        p99: histogramQuantile(buckets, 0.99) / 1000,
        lastP50: quantile(lastLatencies, 0.5) / 1000,
        lastP99: quantile(lastLatencies, 0.99) / 1000,
        achievedRate:
          (s1.server.published - s0.server.published) /
          ((s1.server.timeMs - s0.server.timeMs) / 1000),
        incompleteEvents: incomplete,
        clientCpuPctMax: t.clientCpuPctMax,
        serverCpuPct: t.serverCpuPct,
        otherCpuPct: t.otherCpuPct,
      };
      if (!(deliveries > 0)) this.failures.push(`${this.label(setup)}: no latency recorded`);
      progress(
        `${this.label(setup)} at ${formatCount(rate)} events/s: p50 ${sample.p50.toFixed(2)} ms, ` +
          `p99 ${sample.p99.toFixed(2)} ms, last session p50 ${sample.lastP50.toFixed(2)} / p99 ${sample.lastP99.toFixed(2)} ms` +
          `, server ${sample.serverCpuPct.toFixed(0)}%, clients ≤${sample.clientCpuPctMax.toFixed(0)}%, other ${sample.otherCpuPct.toFixed(0)}%` +
          (incomplete > 0 ? `, ${incomplete} of ${expectedEvents} events incomplete` : ''),
      );
      return sample;
    } finally {
      await this.teardown(server);
    }
  }
}

/** The server's, the clients' and the machine's counters at one instant. */
interface Snapshots {
  server: ServerSnapshot;
  clients: ClientSnapshot[];
  machine: { busy: number; total: number } | undefined;
}

interface ThroughputSample {
  deliveries: number;
  deliveriesPerSec: number;
  eventsPerSecPerSession: number;
  cpuUsPerDelivery: number;
  /** The kernel's part of cpuUsPerDelivery (system time). */
  systemUsPerDelivery: number;
  serverCpuPct: number;
  clientCpuPctMax: number;
  dropped: number;
  /** Turns in which the load generator waited for backlogged sessions. */
  backlogWaits: number;
  /** The whole machine's busy CPU, % of one core (NaN off Linux). */
  machineCpuPct: number;
  /**
   * Busy CPU not charged to the server or the clients, % of one core: other processes, and
   * loopback's softirq work when the kernel does not charge it to the sender.
   */
  otherCpuPct: number;
  memoryPerSessionKiB: number;
  heapPerSessionKiB: number;
  /** [seconds since the first sample (load start), MiB]. */
  rss: Array<[number, number]>;
  /** When the counted window started, in the RSS series' seconds. */
  rssWindowStartS: number;
}

interface LatencySample {
  p50: number;
  p99: number;
  lastP50: number;
  lastP99: number;
  achievedRate: number;
  incompleteEvents: number;
  clientCpuPctMax: number;
  serverCpuPct: number;
  otherCpuPct: number;
}

function throughputSample(
  s0: Snapshots,
  s1: Snapshots,
  readingSessions: number,
  rss: Array<[number, number]>,
): ThroughputSample {
  let deliveries = 0;
  let deliveriesPerSec = 0;
  let clientCpuPctMax = 0;
  let clientCpuPctSum = 0;
  s1.clients.forEach((c1, i) => {
    const c0 = s0.clients[i] as ClientSnapshot;
    const seconds = (c1.timeMs - c0.timeMs) / 1000;
    deliveries += c1.events - c0.events;
    deliveriesPerSec += (c1.events - c0.events) / seconds;
    const pct = ((c1.cpuUs - c0.cpuUs) / 1e6 / seconds) * 100;
    clientCpuPctMax = Math.max(clientCpuPctMax, pct);
    clientCpuPctSum += pct;
  });
  const serverSeconds = (s1.server.timeMs - s0.server.timeMs) / 1000;
  const cpuUs = s1.server.cpuUs - s0.server.cpuUs;
  const serverCpuPct = (cpuUs / 1e6 / serverSeconds) * 100;
  const machineCpuPct =
    s0.machine && s1.machine && s1.machine.total > s0.machine.total
      ? ((s1.machine.busy - s0.machine.busy) / (s1.machine.total - s0.machine.total)) *
        cpus().length *
        100
      : NaN;
  const first = rss[0]?.[0] ?? 0;
  return {
    deliveries,
    deliveriesPerSec,
    eventsPerSecPerSession: deliveriesPerSec / Math.max(1, readingSessions),
    cpuUsPerDelivery: cpuUs / Math.max(1, deliveries),
    systemUsPerDelivery: (s1.server.cpuSystemUs - s0.server.cpuSystemUs) / Math.max(1, deliveries),
    serverCpuPct,
    clientCpuPctMax,
    machineCpuPct,
    otherCpuPct: Math.max(0, machineCpuPct - serverCpuPct - clientCpuPctSum),
    dropped: s1.server.dropped - s0.server.dropped,
    backlogWaits: s1.server.backlogWaits - s0.server.backlogWaits,
    memoryPerSessionKiB: NaN,
    heapPerSessionKiB: NaN,
    rss: rss.map(([t, bytes]) => [(t - first) / 1000, bytes / 1024 / 1024]),
    rssWindowStartS: (s0.server.timeMs - first) / 1000,
  };
}

function pick<T>(samples: T[], key: keyof T): Summary {
  return summarize(samples.map((s) => s[key] as number));
}

// ---------------------------------------------------------------------------
// The run

/** Prints the tables and writes latest.json, latest.md and chart.svg. */
function writeOutputs(results: BenchResults, out: string, command: string): void {
  console.log('');
  console.log(textTable(mainRows(results)));
  const work = workRows(results);
  if (work !== undefined) console.log('\n' + textTable(work));
  console.log('\n' + textTable(targetRows(results)));
  console.log(`\n${environmentLine(results)}; ${results.durationSeconds} s`);
  mkdirSync(out, { recursive: true });
  writeFileSync(`${out}/latest.json`, JSON.stringify(results, null, 2) + '\n');
  writeFileSync(`${out}/latest.md`, markdownReport(results, command));
  writeFileSync(`${out}/chart.svg`, chartSvg(results));
  console.log(`written: ${out}/latest.json, latest.md, chart.svg`);
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (options.render !== undefined) {
    const results = JSON.parse(readFileSync(options.render, 'utf8')) as BenchResults;
    results.targets = evaluateTargets(results);
    const smoke = (results.options as { smoke?: boolean }).smoke === true;
    writeOutputs(results, options.out, smoke ? 'npm run bench:smoke' : 'npm run bench');
    return;
  }
  const started = Date.now();
  const cpuList = cpus();
  const results: BenchResults = {
    environment: {
      node: process.version,
      cpuModel: cpuList[0]?.model.trim() ?? 'unknown',
      cores: cpuList.length,
      platform: `${platform()} ${release()}`,
      totalMemoryMiB: Math.round(totalmem() / 1024 / 1024),
      date: new Date().toISOString(),
    },
    options: { ...options },
    durationSeconds: 0,
    sessionCounts: options.sessions,
    throughput: {},
    latency: {},
    targets: [],
    failures: [],
  };
  console.log(`pushwire fan-out benchmark${options.smoke ? ' (smoke)' : ''}`);
  console.log(environmentLine(results));
  console.log(
    `sessions ${options.sessions.join(', ')}; ${options.reps} interleaved repetitions; warm-up ${options.warmupS} s, ` +
      `windows ${options.durationS} s; ${options.clients} client processes; bursts of ${options.batch} events; ` +
      `entity 200 bytes (JSON)\n`,
  );

  mkdirSync(options.out, { recursive: true });
  const clients: ClientChild[] = Array.from(
    { length: options.clients },
    (_, i) => new Child(`client ${i}`, CLIENT_FILE, [], ['--import', 'tsx']),
  );
  const bench = new Bench(options, clients);
  const stopAll = async (): Promise<void> => {
    await Promise.all(clients.map((c) => c.stop()));
  };

  try {
    const throughputSamples = new Map<string, ThroughputSample[]>();
    const key = (mode: Mode, sessions: number): string => `${mode}@${sessions}`;
    const largest = Math.max(...options.sessions);

    if (options.phases.includes('throughput')) {
      for (const sessions of options.sessions) {
        console.log(`Throughput at maximum load, ${sessions} sessions:`);
        for (let rep = 0; rep < options.reps; rep++) {
          for (const mode of inRepOrder(options.modes, rep)) {
            const setup: Setup = {
              mode,
              sessions,
              variant: 'none',
              slow: 0,
              memory: sessions === largest,
            };
            const sample = await bench.safely(setup, () =>
              bench.throughput(setup, options.durationS),
            );
            if (sample === undefined) continue;
            const k = key(mode, sessions);
            throughputSamples.set(k, [...(throughputSamples.get(k) ?? []), sample]);
          }
        }
        const figures: Partial<Record<Mode, ThroughputFigures>> = {};
        for (const mode of options.modes) {
          const samples = throughputSamples.get(key(mode, sessions)) ?? [];
          figures[mode] = {
            deliveriesPerSec: pick(samples, 'deliveriesPerSec'),
            eventsPerSecPerSession: pick(samples, 'eventsPerSecPerSession'),
            cpuUsPerDelivery: pick(samples, 'cpuUsPerDelivery'),
            systemUsPerDelivery: pick(samples, 'systemUsPerDelivery'),
            serverCpuPct: pick(samples, 'serverCpuPct'),
            clientCpuPctMax: pick(samples, 'clientCpuPctMax'),
            machineCpuPct: pick(samples, 'machineCpuPct'),
            otherCpuPct: pick(samples, 'otherCpuPct'),
            dropped: pick(samples, 'dropped'),
            ...(sessions === largest
              ? {
                  memoryPerSessionKiB: pick(samples, 'memoryPerSessionKiB'),
                  heapPerSessionKiB: pick(samples, 'heapPerSessionKiB'),
                }
              : {}),
          };
        }
        results.throughput[String(sessions)] = figures;
      }
    }

    if (options.phases.includes('latency')) {
      for (const sessions of options.sessions) {
        // Half of the raw limit measured earlier in this run (or of the fastest mode measured).
        const raw = results.throughput[String(sessions)]?.raw?.eventsPerSecPerSession.median;
        const fallback = Math.max(
          ...Object.values(results.throughput[String(sessions)] ?? {}).map(
            (f) => f?.eventsPerSecPerSession.median ?? 0,
          ),
          0,
        );
        const limit = raw !== undefined && raw > 0 ? raw : fallback > 0 ? fallback : 200;
        const rate = Math.max(1, Math.round(limit / 2));
        console.log(
          `Latency at ${rate} events/s (half the raw limit) in bursts of ${options.batch}, ${sessions} sessions:`,
        );
        const samples = new Map<Mode, LatencySample[]>();
        for (let rep = 0; rep < options.reps; rep++) {
          for (const mode of inRepOrder(options.modes, rep)) {
            const setup: Setup = { mode, sessions, variant: 'none', slow: 0, memory: false };
            const sample = await bench.safely(setup, () => bench.latency(setup, rate));
            if (sample === undefined) continue;
            samples.set(mode, [...(samples.get(mode) ?? []), sample]);
          }
        }
        const modes: Partial<Record<Mode, LatencyFigures>> = {};
        for (const [mode, s] of samples) {
          modes[mode] = {
            p50: pick(s, 'p50'),
            p99: pick(s, 'p99'),
            lastP50: pick(s, 'lastP50'),
            lastP99: pick(s, 'lastP99'),
            achievedRate: pick(s, 'achievedRate'),
            incompleteEvents: pick(s, 'incompleteEvents'),
            clientCpuPctMax: pick(s, 'clientCpuPctMax'),
            serverCpuPct: pick(s, 'serverCpuPct'),
            otherCpuPct: pick(s, 'otherCpuPct'),
          };
        }
        results.latency[String(sessions)] = { rateEventsPerSec: rate, modes };
      }
    }

    if (options.phases.includes('work') && options.modes.includes('pushwire-json')) {
      const sessions = options.workSessions;
      console.log(`Per-session work, pushwire JSON, ${sessions} sessions:`);
      const samples = new Map<Variant, ThroughputSample[]>();
      for (let rep = 0; rep < options.reps; rep++) {
        for (const variant of inRepOrder(VARIANTS, rep)) {
          const setup: Setup = { mode: 'pushwire-json', sessions, variant, slow: 0, memory: false };
          const sample = await bench.safely(setup, () =>
            bench.throughput(setup, options.durationS),
          );
          if (sample === undefined) continue;
          samples.set(variant, [...(samples.get(variant) ?? []), sample]);
        }
      }
      const base = pick(samples.get('none') ?? [], 'deliveriesPerSec').median;
      const variants: Partial<Record<Variant, WorkFigures>> = {};
      for (const [variant, s] of samples) {
        const rate = pick(s, 'deliveriesPerSec');
        variants[variant] = {
          deliveriesPerSec: rate,
          cpuUsPerDelivery: pick(s, 'cpuUsPerDelivery'),
          clientCpuPctMax: pick(s, 'clientCpuPctMax'),
          ratio: rate.median / base,
        };
      }
      results.work = { sessions, variants };
    }

    if (options.phases.includes('slow')) {
      const sessions = options.workSessions;
      const slow = Math.max(1, Math.ceil(sessions * 0.01));
      console.log(`Slow consumers: ${slow} of ${sessions} sessions never read:`);
      const samples = new Map<Mode, ThroughputSample[]>();
      // pushwire's target is a ratio: its baseline is measured here, next to each slow run,
      // not taken from the throughput phase (minutes earlier, under other neighbours).
      const baselines = new Map<Mode, ThroughputSample[]>();
      for (let rep = 0; rep < options.reps; rep++) {
        for (const mode of inRepOrder(options.modes, rep)) {
          if (mode.startsWith('pushwire')) {
            const normal: Setup = { mode, sessions, variant: 'none', slow: 0, memory: false };
            const base = await bench.safely(normal, () =>
              bench.throughput(normal, options.slowDurationS),
            );
            if (base !== undefined) baselines.set(mode, [...(baselines.get(mode) ?? []), base]);
          }
          const setup: Setup = { mode, sessions, variant: 'none', slow, memory: false };
          const sample = await bench.safely(setup, () =>
            bench.throughput(setup, options.slowDurationS),
          );
          if (sample === undefined) continue;
          samples.set(mode, [...(samples.get(mode) ?? []), sample]);
        }
      }
      const modes: Partial<Record<Mode, SlowFigures>> = {};
      for (const [mode, s] of samples) {
        const others = pick(s, 'eventsPerSecPerSession');
        const paired = baselines.get(mode);
        const baseline =
          paired !== undefined && paired.length > 0
            ? pick(paired, 'eventsPerSecPerSession').median
            : (results.throughput[String(sessions)]?.[mode]?.eventsPerSecPerSession.median ?? NaN);
        const mib = (f: (series: Array<[number, number]>) => number): Summary =>
          summarize(s.map((x) => f(x.rss)));
        const at = (series: Array<[number, number]>, t: number): number => {
          let value = NaN;
          for (const [time, v] of series) if (time <= t) value = v;
          return value;
        };
        modes[mode] = {
          othersEventsPerSecPerSession: others,
          othersDeliveriesPerSec: pick(s, 'deliveriesPerSec'),
          ratioToBaseline: others.median / baseline,
          baseline: paired !== undefined && paired.length > 0 ? 'paired' : 'throughput phase',
          rssStartMiB: summarize(s.map((x) => at(x.rss, x.rssWindowStartS))),
          rssEndMiB: mib((series) => series[series.length - 1]?.[1] ?? NaN),
          rssMaxMiB: mib((series) => Math.max(...series.map(([, v]) => v))),
          rssGrowthSecondHalfMiB: summarize(
            s.map((x) => {
              const end = x.rss[x.rss.length - 1];
              if (end === undefined) return NaN;
              const start = x.rssWindowStartS;
              return end[1] - at(x.rss, start + (end[0] - start) / 2);
            }),
          ),
          dropped: pick(s, 'dropped'),
          rssSeries: s[0]?.rss ?? [],
        };
      }
      results.slow = { sessions, slowSessions: slow, modes };
    }
  } finally {
    await stopAll();
  }

  results.targets = evaluateTargets(results);
  results.failures = bench.failures;
  results.durationSeconds = Math.round((Date.now() - started) / 1000);

  writeOutputs(results, options.out, options.smoke ? 'npm run bench:smoke' : 'npm run bench');

  if (bench.failures.length > 0) {
    console.error(`\nFAILED:\n  ${bench.failures.join('\n  ')}`);
    process.exitCode = 1;
  }
}

/** Issue 7's targets (and issue 8's filter target), on medians of this run. */
function evaluateTargets(results: BenchResults): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const ratio = (a: number | undefined, b: number | undefined): number =>
    a !== undefined && b !== undefined && b > 0 ? a / b : NaN;
  const pushModes: Mode[] = ['pushwire-json', 'pushwire-msgpack'];
  for (const [sessions, t] of Object.entries(results.throughput)) {
    for (const mode of pushModes) {
      const rate = t[mode]?.deliveriesPerSec.median;
      const vsRaw = ratio(rate, t.raw?.deliveriesPerSec.median);
      if (Number.isFinite(vsRaw)) {
        checks.push({
          name: `${MODE_LABELS[mode]} delivered/s vs raw, ${sessions} sessions`,
          measured: `${vsRaw.toFixed(2)}×`,
          target: '≥ 0.8×',
          met: vsRaw >= 0.8,
        });
      }
      const vsIo = ratio(rate, t.socketio?.deliveriesPerSec.median);
      if (Number.isFinite(vsIo)) {
        checks.push({
          name: `${MODE_LABELS[mode]} delivered/s vs socket.io, ${sessions} sessions`,
          measured: `${vsIo.toFixed(2)}×`,
          target: '≥ 5×',
          met: vsIo >= 5,
        });
      }
      const mem = t[mode]?.memoryPerSessionKiB?.median;
      const memRaw = ratio(mem, t.raw?.memoryPerSessionKiB?.median);
      if (Number.isFinite(memRaw)) {
        checks.push({
          name: `${MODE_LABELS[mode]} idle memory/session vs raw, ${sessions} sessions`,
          measured: `${memRaw.toFixed(2)}×`,
          target: '≤ 1.5×',
          met: memRaw <= 1.5,
        });
      }
      const memIo = ratio(mem, t.socketio?.memoryPerSessionKiB?.median);
      if (Number.isFinite(memIo)) {
        checks.push({
          name: `${MODE_LABELS[mode]} idle memory/session vs socket.io, ${sessions} sessions`,
          measured: `${memIo.toFixed(2)}×`,
          target: '≤ 0.75×',
          met: memIo <= 0.75,
        });
      }
    }
  }
  for (const [sessions, l] of Object.entries(results.latency)) {
    for (const mode of pushModes) {
      for (const [label, field] of [
        ['per delivery', 'p99'],
        ['last session', 'lastP99'],
      ] as const) {
        const p = l.modes[mode]?.[field].median;
        const raw = l.modes.raw?.[field].median;
        if (p === undefined || raw === undefined || !Number.isFinite(p) || !Number.isFinite(raw))
          continue;
        checks.push({
          name: `${MODE_LABELS[mode]} p99 ${label} vs raw, ${sessions} sessions`,
          measured: `${p.toFixed(2)} ms vs ${raw.toFixed(2)} ms (${p >= raw ? '+' : ''}${(p - raw).toFixed(2)})`,
          target: '≤ raw + 5 ms',
          met: p - raw <= 5,
        });
      }
    }
  }
  const work = results.work;
  if (work !== undefined) {
    for (const variant of ['config', 'dispatch', 'config+dispatch'] as const) {
      const r = work.variants[variant]?.ratio;
      if (r === undefined) continue;
      checks.push({
        name: `per-session work: ${variant} vs none`,
        measured: `${r.toFixed(2)}×`,
        target: '≥ 0.9× (≤ 10% cost)',
        met: r >= 0.9,
      });
    }
    const t = work.variants['tracing-unsampled']?.ratio;
    if (t !== undefined) {
      checks.push({
        name: 'tracing plugin, unsampled, vs none (issue 4)',
        measured: `${t.toFixed(2)}×`,
        target: '≥ 0.95×',
        met: t >= 0.95,
      });
    }
    const f = work.variants.filter?.ratio;
    if (f !== undefined) {
      checks.push({
        name: 'filter (issue 8) vs no filter',
        measured: `${f.toFixed(2)}×`,
        target: '≥ 0.8×',
        met: f >= 0.8,
      });
    }
  }
  const slow = results.slow;
  if (slow !== undefined) {
    for (const mode of pushModes) {
      const f = slow.modes[mode];
      if (f === undefined) continue;
      checks.push({
        name: `${MODE_LABELS[mode]}: others' rate with 1% slow consumers`,
        measured: `${f.ratioToBaseline.toFixed(2)}×`,
        target: '≥ 0.9×',
        met: f.ratioToBaseline >= 0.9,
      });
      const growth = f.rssGrowthSecondHalfMiB.median;
      checks.push({
        name: `${MODE_LABELS[mode]}: RSS bounded with slow consumers`,
        measured: `+${growth.toFixed(1)} MiB in the 2nd half, max ${f.rssMaxMiB.median.toFixed(0)} MiB`,
        target: 'flat (< 4 MiB growth)',
        met: growth < 4,
      });
    }
  }
  return checks;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
