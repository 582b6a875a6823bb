/**
 * The scale phase (issue 15): idle sessions by the ten thousand in one
 * server process, for every mode, each in a fresh process: how fast they
 * connect, the RSS and V8 heap each one costs, and at the fan-out sizes the
 * delivered rate, CPU and latency; and, when a size cannot be reached, what
 * stopped it, read from the server (its file descriptors, what accept()
 * refused) and from the clients' first error.
 *
 * The phase has client children of its own, as many as the largest size
 * needs (a process holds at most its RLIMIT_NOFILE sockets), their sockets
 * spread over several loopback source addresses (ephemeral ports run out
 * near 28,000 per source address), pinned to the other core than the
 * server's, and every child's file-descriptor limit raised as far as the
 * machine allows (prlimit).
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { Child, CLIENT_FILE, progress, sleep, type ClientChild } from '../children.js';
import type { Mode, ServerLimits } from '../common.js';
import {
  Bench,
  type ConnectOutcome,
  type LatencySample,
  type Setup,
  type ThroughputSample,
} from '../measurement.js';
import type { BenchResults } from '../report.js';
import type { ScaleFigures, ScaleRun } from '../scale-report.js';

/** The file-descriptor limit asked for each child (the kernel's nr_open is the ceiling). */
const WANTED_FDS = 1_048_576;
/** Sockets per client child: under the usual 20,000-file limit with room for the runtime's own. */
const SESSIONS_PER_CLIENT = 15_000;
/** Loopback source addresses the clients bind to in turn: 8 × ~28,000 ephemeral ports. */
const LOCAL_ADDRESSES = Array.from({ length: 8 }, (_, i) => `127.0.0.${i + 2}`);

/** The soft and hard RLIMIT_NOFILE of a process, from /proc (-1 when unreadable). */
function fdLimits(pid: number): { soft: number; hard: number } {
  try {
    const line = readFileSync(`/proc/${pid}/limits`, 'latin1')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    const [soft, hard] = (line ?? '')
      .split(/\s{2,}/)
      .slice(1, 3)
      .map(Number);
    return { soft: soft ?? -1, hard: hard ?? -1 };
  } catch {
    return { soft: -1, hard: -1 };
  }
}

/**
 * Raises a child's open-file limit: to {@link WANTED_FDS} when the machine lets us (root with
 * CAP_SYS_RESOURCE), else the soft limit up to the hard one, which any process may do. Returns
 * the soft limit in force. Why prlimit on the running child rather than `ulimit` in a shell
 * around it: fork() keeps its IPC channel only when it starts node itself.
 */
function raiseFdLimit(pid: number): number {
  for (const limit of [`${WANTED_FDS}:${WANTED_FDS}`, `${fdLimits(pid).hard}`]) {
    try {
      execFileSync('prlimit', ['--pid', String(pid), `--nofile=${limit}`], { stdio: 'ignore' });
      break;
    } catch {
      // Not permitted (or no prlimit): try the next, smaller, limit.
    }
  }
  return fdLimits(pid).soft;
}

/**
 * A process's RSS in bytes, read from outside it (/proc/<pid>/status): at its open-file limit a
 * process cannot read its own (Node opens /proc/self/stat for it, and gets EMFILE).
 */
function residentBytes(pid: number): number {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'latin1')
      .split('\n')
      .find((l) => l.startsWith('VmRSS:'));
    return Number(line?.match(/\d+/)?.[0] ?? NaN) * 1024;
  } catch {
    return NaN;
  }
}

/**
 * The kernel's slab memory in bytes (/proc/meminfo), where a socket's kernel structures live
 * (the TCP socket, its file and inode, the epoll entry): memory a session costs the machine
 * that no process's RSS shows. Machine-wide, so other processes' churn is in it too.
 */
function slabBytes(): number {
  try {
    const line = readFileSync('/proc/meminfo', 'latin1')
      .split('\n')
      .find((l) => l.startsWith('Slab:'));
    return Number(line?.match(/\d+/)?.[0] ?? NaN) * 1024;
  } catch {
    return NaN;
  }
}

/** Pins a process to one CPU (taskset), so that the load generator stays off the server's core. */
function pin(pid: number, cpu: number): boolean {
  try {
    execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The modes in the order they are measured at each size: raw first, as the others' yardstick. */
function scaleOrder(modes: readonly Mode[]): Mode[] {
  return [...modes].sort((a, b) => (a === 'raw' ? -1 : b === 'raw' ? 1 : 0));
}

/** Runs the phase and stores its figures in `results.scale`. */
export async function scalePhase(bench: Bench, results: BenchResults): Promise<void> {
  const { options } = bench;
  const largest = Math.max(...options.scaleSizes);
  // The smoke run keeps the phase from rotting in well under 30 s: pushwire JSON and its
  // yardstick only (the other modes' servers run in the smoke's other phases).
  const modes = options.smoke
    ? options.modes.filter((m) => m === 'raw' || m === 'pushwire-json')
    : options.modes;
  const clientCount = Math.max(2, Math.ceil(largest / SESSIONS_PER_CLIENT));
  // Two cores or more: the server on CPU 0, every client on CPU 1 (the orchestrator mostly
  // sleeps). On one core there is nothing to keep apart.
  const split = cpus().length >= 2;
  const clients: ClientChild[] = Array.from(
    { length: clientCount },
    (_, i) => new Child(`scale client ${i}`, CLIENT_FILE, [], ['--import', 'tsx']),
  );
  const clientFdLimits: number[] = [];
  let pinned = split;
  for (const client of clients) {
    const pid = client.process.pid ?? 0;
    clientFdLimits.push(raiseFdLimit(pid));
    if (split) pinned = pin(pid, 1) && pinned;
  }
  const serverFdLimits: number[] = [];
  const scale = new Bench(options, clients, {
    localAddresses: LOCAL_ADDRESSES,
    concurrency: 128,
    stopAfterFailures: 200,
    onServer: (server) => {
      const pid = server.process.pid ?? 0;
      serverFdLimits.push(raiseFdLimit(pid));
      if (split) pinned = pin(pid, 0) && pinned;
    },
  });

  const load = { start: loadavg()[0] ?? NaN, end: NaN };
  const figures: ScaleFigures = {
    sizes: options.scaleSizes,
    fanoutSizes: options.scaleFanout,
    clients: clientCount,
    localAddresses: LOCAL_ADDRESSES,
    pinned: pinned ? 'server on CPU 0, clients on CPU 1' : 'not pinned',
    fdLimitWanted: WANTED_FDS,
    fdLimitServer: -1,
    fdLimitClients: Math.min(...clientFdLimits),
    loadAverage: load,
    runs: [],
  };
  /** Per mode, the size it could not reach: larger ones are not attempted. */
  const brokeAt = new Map<Mode, number>();
  try {
    for (const size of options.scaleSizes) {
      console.log(`Scale, ${size} idle sessions (${clientCount} client processes):`);
      let rawRate: number | undefined;
      for (const mode of scaleOrder(modes)) {
        if (brokeAt.has(mode)) continue;
        const setup: Setup = { mode, sessions: size, variant: 'none', slow: 0, memory: true };
        const run = await scale.safely(setup, () =>
          measureSize(scale, setup, options.scaleFanout.includes(size), rawRate),
        );
        if (run === undefined) {
          brokeAt.set(mode, size);
          continue;
        }
        figures.runs.push(run);
        if (mode === 'raw' && run.fanout !== undefined) {
          rawRate = run.fanout.deliveriesPerSec / Math.max(1, run.fanout.sessions);
        }
        if (run.open < size) brokeAt.set(mode, size);
      }
    }
  } finally {
    await Promise.all(clients.map((c) => c.stop()));
  }
  load.end = loadavg()[0] ?? NaN;
  figures.fdLimitServer = serverFdLimits.length > 0 ? Math.min(...serverFdLimits) : -1;
  bench.failures.push(...scale.failures);
  results.scale = figures;
}

/**
 * One mode at one size, in a fresh server: memory before, connect (timed), memory after, the
 * server's limits; then, at a fan-out size, maximum load and latency at half the raw loop's
 * per-session rate of this size (measured just before), on the sessions that connected.
 */
async function measureSize(
  bench: Bench,
  setup: Setup,
  fanout: boolean,
  rawEventsPerSec: number | undefined,
): Promise<ScaleRun> {
  const { server, port, path } = await bench.startServer(setup);
  try {
    const pid = server.process.pid ?? 0;
    const before = await server.request({ type: 'memory' }, 'memory');
    const rssBefore = residentBytes(pid);
    const slabBefore = slabBytes();
    const outcome: ConnectOutcome = { failed: 0, firstError: undefined };
    const started = Date.now();
    const open = await bench.connect(setup, server, port, path, outcome);
    const connectSeconds = (Date.now() - started) / 1000;
    const { limits } = await server.request({ type: 'limits' }, 'limits');
    // Counted from outside too: at its limit the server cannot open /proc/self/fd to count.
    try {
      limits.fds = readdirSync(`/proc/${pid}/fd`).length;
      limits.fdLimit = fdLimits(pid).soft;
    } catch {
      // Not Linux: keep what the server said.
    }
    // Let the handshakes' garbage become collectable (timers of the upgrade, the parser).
    await sleep(500);
    const after = await server.request({ type: 'memory' }, 'memory', 120_000);
    const rssAfter = residentBytes(pid);
    // Both ends of each loopback connection are on this machine: half is the server's socket.
    const kernelPerSocketKiB = (slabBytes() - slabBefore) / 1024 / Math.max(1, open) / 2;
    const run: ScaleRun = {
      mode: setup.mode,
      size: setup.sessions,
      open,
      failed: outcome.failed,
      firstError: outcome.firstError,
      limits: limits satisfies ServerLimits,
      connectSeconds,
      connectPerSec: open / connectSeconds,
      rssBeforeMiB: rssBefore / 1024 / 1024,
      rssAfterMiB: rssAfter / 1024 / 1024,
      rssPerSessionKiB: (rssAfter - rssBefore) / 1024 / Math.max(1, open),
      heapPerSessionKiB: (after.heapUsed - before.heapUsed) / 1024 / Math.max(1, open),
      heapTotalPerSessionKiB: (after.heapTotal - before.heapTotal) / 1024 / Math.max(1, open),
      kernelPerSocketKiB,
      externalPerSessionKiB: (after.external - before.external) / 1024 / Math.max(1, open),
    };
    progress(
      `${bench.label(setup)}: ${open} open` +
        (outcome.failed > 0 ? ` (${outcome.failed} failed: ${outcome.firstError})` : '') +
        ` in ${connectSeconds.toFixed(1)} s (${Math.round(run.connectPerSec)}/s), ` +
        `${run.rssPerSessionKiB.toFixed(2)} KiB RSS and ${run.heapPerSessionKiB.toFixed(2)} KiB heap per session, ` +
        `fds ${limits.fds}/${limits.fdLimit}` +
        (limits.serverErrors > 0
          ? `, server errors ${limits.serverErrors} (${limits.firstServerError})`
          : ''),
    );
    if (fanout && open > 0) {
      const max: ThroughputSample = await bench.maxLoadWindow(
        setup,
        server,
        open,
        bench.options.durationS,
      );
      bench.logThroughput(setup, max);
      const perSession = rawEventsPerSec ?? max.deliveriesPerSec / open;
      const rate = Math.max(1, Math.round(perSession / 2));
      const latency: LatencySample = await bench.latencyWindow(setup, server, open, rate);
      run.fanout = {
        sessions: open,
        deliveriesPerSec: max.deliveriesPerSec,
        cpuUsPerDelivery: max.cpuUsPerDelivery,
        systemUsPerDelivery: max.systemUsPerDelivery,
        serverCpuPct: max.serverCpuPct,
        clientCpuPctSum: max.clientCpuPctSum,
        clientCpuPctMax: max.clientCpuPctMax,
        machineCpuPct: max.machineCpuPct,
        otherCpuPct: max.otherCpuPct,
        latencyRate: rate,
        achievedRate: latency.achievedRate,
        p50: latency.p50,
        p99: latency.p99,
        lastP50: latency.lastP50,
        lastP99: latency.lastP99,
        incompleteEvents: latency.incompleteEvents,
        latencyServerCpuPct: latency.serverCpuPct,
      };
    }
    return run;
  } finally {
    await bench.teardown(server);
  }
}
