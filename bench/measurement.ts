/**
 * One measurement: start a fresh server child, connect the sessions through
 * the client children, load the server, read everyone's counters before and
 * after a window, and reduce them to one sample. The phases (bench/phases/)
 * decide what is measured, in which order and how often; this module knows
 * only how.
 */
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import {
  Child,
  progress,
  sleep,
  SERVER_FILE,
  type ClientChild,
  type ServerChild,
} from './children.js';
import {
  BENCH_FILTER,
  histogramQuantile,
  MODE_LABELS,
  quantile,
  type ClientProtocol,
  type ClientReply,
  type ClientSnapshot,
  type Mode,
  type ServerReply,
  type ServerSnapshot,
  type ServerSpec,
  type Variant,
} from './common.js';
import type { Options } from './options.js';
import { formatCount, summarize, type Summary } from './report.js';

/**
 * The order of one repetition: as given, reversed every other repetition (A B C D, D C B A…).
 * Why: a measurement may inherit something from the one before it (the previous server's
 * sockets closing in the kernel, the clients' state); in a fixed order the same mode would
 * always pay for the same neighbour. (Checked for the per-session-work variants: their costs
 * came out the same in both orders.)
 */
export function inRepOrder<T>(items: readonly T[], rep: number): readonly T[] {
  return rep % 2 === 0 ? items : [...items].reverse();
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

/** What one measurement runs: which server, how many sessions, with what per-session work. */
export interface Setup {
  mode: Mode;
  sessions: number;
  variant: Variant;
  /** Sessions that never read. */
  slow: number;
  /** Measure idle memory before the load. */
  memory: boolean;
  /** pushwire: LocalPubSub keeps a history of this many events; off when absent. */
  history?: number;
}

/** How the scale phase's measurements connect, beyond the other phases' defaults. */
export interface ConnectTuning {
  /** Source addresses the clients' sockets are spread over (ephemeral ports are per address). */
  localAddresses: string[];
  /** Connections each client child attempts at once. */
  concurrency: number;
  /** A client child stops after this many failed connections in a row. */
  stopAfterFailures: number;
  /** Called with every server child once it is ready (CPU affinity, file-descriptor limit). */
  onServer(server: ServerChild): void;
}

/** Connections that failed, when the caller counts them rather than failing the run. */
export interface ConnectOutcome {
  failed: number;
  firstError: string | undefined;
}

/** The measurements of one run, over one set of client children; a failure is recorded, not thrown. */
export class Bench {
  readonly failures: string[] = [];
  #profileCount = 0;

  constructor(
    readonly options: Options,
    readonly clients: ClientChild[],
    readonly tuning?: ConnectTuning,
  ) {}

  async startServer(setup: Setup): Promise<{ server: ServerChild; port: number; path: string }> {
    const spec: ServerSpec = {
      mode: setup.mode,
      variant: setup.variant,
      batch: this.options.batch,
      highWater: this.options.highWater,
      ...(setup.history === undefined ? {} : { historyMaxEvents: setup.history }),
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
    this.tuning?.onServer(server);
    return { server, port: ready.port, path: ready.path };
  }

  /**
   * Connects `setup.sessions` sessions spread over the client children; returns how many opened.
   * Failed connections are a failure of the run, unless `outcome` is given: then they are
   * counted there (the scale phase expects them past a limit; they are its finding).
   */
  async connect(
    setup: Setup,
    server: ServerChild,
    port: number,
    path: string,
    outcome?: ConnectOutcome,
  ): Promise<number> {
    const protocol: ClientProtocol =
      setup.mode === 'socketio' ? 'socketio' : setup.mode === 'pushwire-sse' ? 'sse' : 'push';
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
            concurrency: this.tuning?.concurrency ?? 64,
            ...(this.tuning === undefined
              ? {}
              : {
                  localAddresses: this.tuning.localAddresses,
                  stopAfterFailures: this.tuning.stopAfterFailures,
                }),
          },
          'connected',
          600_000,
        );
      }),
    );
    const open = replies.reduce((sum, r) => sum + r.open, 0);
    const failed = replies.reduce((sum, r) => sum + r.failed, 0);
    if (outcome !== undefined) {
      outcome.failed = failed;
      outcome.firstError = replies.find((r) => r.firstError)?.firstError;
    } else if (failed > 0) {
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
    const history = setup.history === undefined ? '' : ' +history';
    return `${MODE_LABELS[setup.mode]}${variant}${history}, ${setup.sessions} sessions${slow}`;
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
      const sample = await this.maxLoadWindow(setup, server, open, durationS);
      sample.memoryPerSessionKiB = memoryPerSessionKiB;
      sample.heapPerSessionKiB = heapPerSessionKiB;
      this.logThroughput(setup, sample);
      return sample;
    } finally {
      await this.teardown(server);
    }
  }

  /** The maximum-load window on a server whose `open` sessions are connected (scale phase too). */
  async maxLoadWindow(
    setup: Setup,
    server: ServerChild,
    open: number,
    durationS: number,
  ): Promise<ThroughputSample> {
    if (setup.slow > 0) {
      await server.request({ type: 'rss-sampling', intervalMs: 250 }, 'rss-sampling');
    }
    await server.request({ type: 'load-max' }, 'load-started');
    await sleep(this.options.warmupS * 1000);
    const s0 = await this.snapshots(server);
    await sleep(durationS * 1000);
    const s1 = await this.snapshots(server);
    const rss =
      setup.slow > 0 ? (await server.request({ type: 'rss-samples' }, 'rss-samples')).samples : [];
    await server.request({ type: 'stop-load' }, 'load-stopped');
    const sample = throughputSample(s0, s1, open - setup.slow, rss);
    if (!(sample.deliveries > 0)) this.failures.push(`${this.label(setup)}: no deliveries`);
    return sample;
  }

  /** The progress line of a maximum-load sample. */
  logThroughput(setup: Setup, sample: ThroughputSample): void {
    const memoryPerSessionKiB = sample.memoryPerSessionKiB;
    progress(
      `${this.label(setup)}: ${formatCount(sample.deliveriesPerSec)} deliveries/s, ` +
        `${sample.cpuUsPerDelivery.toFixed(3)} µs CPU/delivery (${sample.systemUsPerDelivery.toFixed(3)} system), server ${sample.serverCpuPct.toFixed(0)}%, ` +
        `clients ≤${sample.clientCpuPctMax.toFixed(0)}%, machine ${sample.machineCpuPct.toFixed(0)}% ` +
        `(other ${sample.otherCpuPct.toFixed(0)}%), ${sample.backlogWaits} backlog waits` +
        (setup.memory ? `, ${memoryPerSessionKiB.toFixed(1)} KiB/session` : '') +
        (sample.dropped > 0 ? `, ${sample.dropped} dropped` : ''),
    );
  }

  /** Fixed load: per-delivery and last-session latency. */
  async latency(setup: Setup, rate: number): Promise<LatencySample> {
    const { server, port, path } = await this.startServer(setup);
    try {
      const open = await this.connect(setup, server, port, path);
      return await this.latencyWindow(setup, server, open, rate);
    } finally {
      await this.teardown(server);
    }
  }

  /** The latency window on a server whose `open` sessions are connected (the scale phase's too). */
  async latencyWindow(
    setup: Setup,
    server: ServerChild,
    open: number,
    rate: number,
  ): Promise<LatencySample> {
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
  }
}

/** The server's, the clients' and the machine's counters at one instant. */
export interface Snapshots {
  server: ServerSnapshot;
  clients: ClientSnapshot[];
  machine: { busy: number; total: number } | undefined;
}

/** What one maximum-load measurement yields (the slow-consumer and per-session-work runs too). */
export interface ThroughputSample {
  deliveries: number;
  deliveriesPerSec: number;
  eventsPerSecPerSession: number;
  cpuUsPerDelivery: number;
  /** The kernel's part of cpuUsPerDelivery (system time). */
  systemUsPerDelivery: number;
  serverCpuPct: number;
  clientCpuPctMax: number;
  /** Every client child's CPU together, % of one core. */
  clientCpuPctSum: number;
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

/** What one fixed-load latency measurement yields; latencies in milliseconds. */
export interface LatencySample {
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

/** Reduces the counters before and after a window to one sample. */
export function throughputSample(
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
    clientCpuPctSum,
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

/** The median and spread of one numeric field over the samples of one figure. */
export function pick<T>(samples: T[], key: keyof T): Summary {
  return summarize(samples.map((s) => s[key] as number));
}
