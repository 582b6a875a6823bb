/**
 * The reconnect storm (issue 15, item 3): `--sessions` clients of
 * `pushwire/client/node` on a pushwire server child, which is SIGKILLed and
 * started again on the same port; then, the other way round, the broker is
 * SIGKILLed and restarted under the same sessions. Measures the time until
 * every session is back with its push config applied (and, with history, has
 * recovered what was published while it was away), the peak connection rate
 * and event-loop delay, refusals by connectionRateLimitPlugin when it is on,
 * and that the server never crashes.
 *
 *   npm run bench:storm -- [--sessions 20000] [--backend jetstream] [--rate-limit 30/10000] …
 *
 * Writes `<out>.json`, `<out>.md` and `<out>.svg` (default bench/results/storm). `--help` lists
 * the flags.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { pushMiddleware, type PubSubClient } from '../lib/index.js';
import { freePort, startNats, startRedis, type Broker } from '../test/helpers/brokers.js';
import {
  EXCLUDED_IDENTITY,
  STORM_IDENTITY,
  addVerification,
  hasHistory,
  noCounts,
  type LoadReport,
  type LoadVerification,
  type StormBackend,
} from './storm/common.js';
import {
  LoadGenerator,
  childrenOf,
  StormServer,
  machineCpuMs,
  processCpuMs,
  raiseOpenFileLimit,
} from './storm/processes.js';
import {
  stormDefects,
  stormMarkdown,
  stormSvg,
  type ScenarioResult,
  type StormResults,
} from './storm/report.js';

const USAGE = `Usage: npm run bench:storm -- [flags]

  --sessions N             clients (default 20000)
  --loadgens N             load-generator processes (default 2)
  --workers N              server processes sharing the port (node:cluster; default 1)
  --sched rr|none          how the workers share connections (default none: every worker accepts)
  --backend B              jetstream | redis-streams (history) | nats | redis (none); default jetstream
  --scenarios LIST         server,broker (default both, in that order)
  --rate-limit M/MS|off    connectionRateLimitPlugin: M attempts per MS per address (default off)
  --clients-per-address N  clients sharing a source address 127.0.x.y (default 20)
  --down-ms MS             how long the server or broker stays down (default 3000)
  --publish-rate N         events/s published through the broker the whole time (default 1)
  --min-delay MS           the clients' minDelay (default 500, the client's default)
  --max-delay MS           the clients' maxDelay (default 30000, the client's default)
  --backlog N              the server's listen backlog (default 511, Node's; 4096 livelocked: bench/results/storm-backlog4096.md)
  --ramp N                 clients started per second at the first connection (default 2000)
  --timeout-ms MS          the most any phase may take (default 600000)
  --out PREFIX             results prefix (default bench/results/storm)
  --render FILE            measure nothing: write <out>.md and <out>.svg again from a storm.json
  --help`;

const { values } = parseArgs({
  options: {
    sessions: { type: 'string', default: '20000' },
    loadgens: { type: 'string', default: '2' },
    workers: { type: 'string', default: '1' },
    sched: { type: 'string', default: 'none' },
    backend: { type: 'string', default: 'jetstream' },
    scenarios: { type: 'string', default: 'server,broker' },
    'rate-limit': { type: 'string', default: 'off' },
    'clients-per-address': { type: 'string', default: '20' },
    'down-ms': { type: 'string', default: '3000' },
    'publish-rate': { type: 'string', default: '1' },
    'min-delay': { type: 'string', default: '500' },
    'max-delay': { type: 'string', default: '30000' },
    ramp: { type: 'string', default: '2000' },
    backlog: { type: 'string', default: '511' },
    'timeout-ms': { type: 'string', default: '600000' },
    out: { type: 'string', default: 'bench/results/storm' },
    render: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
if (values.render !== undefined) {
  const saved = JSON.parse(readFileSync(values.render, 'utf8')) as StormResults;
  writeFileSync(`${values.out}.md`, stormMarkdown(saved, `${basename(values.out)}.svg`));
  writeFileSync(`${values.out}.svg`, stormSvg(saved));
  process.exit(0);
}

const sessions = Number(values.sessions);
const loadgens = Number(values.loadgens);
const workers = Number(values.workers);
const backend = values.backend as StormBackend;
if (!['jetstream', 'redis-streams', 'nats', 'redis'].includes(backend)) {
  throw new TypeError(`--backend: ${backend} is not jetstream, redis-streams, nats or redis`);
}
const scenarios = values.scenarios.split(',') as Array<'server' | 'broker'>;
const rateLimit =
  values['rate-limit'] === 'off'
    ? undefined
    : (() => {
        const [maxAttempts, intervalMs] = values['rate-limit'].split('/').map(Number);
        if (!Number.isInteger(maxAttempts) || !Number.isInteger(intervalMs)) {
          throw new TypeError('--rate-limit: M/MS, e.g. 30/10000, or off');
        }
        return { maxAttempts: maxAttempts as number, intervalMs: intervalMs as number };
      })();
const downMs = Number(values['down-ms']);
const publishRate = Number(values['publish-rate']);
const timeoutMs = Number(values['timeout-ms']);
const history = hasHistory(backend);
const TOPIC = 'storm';
const SAMPLE_MS = 100;

const began = Date.now();
// Ctrl-C or a SIGTERM: exit through 'exit', whose handlers kill the children and the broker.
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
function progress(line: string): void {
  const s = Math.round((Date.now() - began) / 1000);
  console.log(
    `[${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}] ${line}`,
  );
}

/** Polls `condition` every 100 ms until it holds; throws `what` after `timeoutMs`. */
async function until(condition: () => boolean, what: string, limit = timeoutMs): Promise<void> {
  const deadline = Date.now() + limit;
  let nextLine = Date.now() + 10_000;
  while (!condition()) {
    failFast();
    if (Date.now() > deadline) throw new Error(`timed out after ${limit} ms: ${what}; ${state()}`);
    // A long wait says where it stands, so that a stuck storm shows what is stuck.
    if (Date.now() >= nextLine) {
      progress(`waiting for ${what}: ${state()}`);
      nextLine += 10_000;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Where the storm stands: the server's last sample and the clients' totals. */
function state(): string {
  const last = server.last;
  return (
    `server ${last ? `${last.sessions} sessions, ${last.configured} configured, ${last.recoveries} recoveries (${last.recoveriesFailed} failed), loop delay ${Math.round(last.loopDelayMax)} ms` : 'down'}; ` +
    `clients ${sum((r) => r.started)} started, ${sum((r) => r.open)} open, ${sum((r) => r.connecting)} connecting, ${sum((r) => r.reopened)} reopened, ${sum((r) => r.recovered)} recovered (${sum((r) => r.recoveredFalse)} false), last seq ≥ ${minSeq()} of ${seq}, ` +
    `${sum((r) => r.retries)} retries, refusals ${JSON.stringify(refusals())}`
  );
}

// ---------------------------------------------------------------------------------------------
// Processes.

// A server process holds one descriptor per session, a load generator one per client (plus a
// few hundred for the rest). Where the hard limit cannot be raised, more workers share the load.
raiseOpenFileLimit(Math.ceil(sessions / Math.min(workers, loadgens)) + 500);

const broker: Broker =
  backend === 'jetstream' || backend === 'nats'
    ? await startNats({ jetstream: backend === 'jetstream' })
    : await startRedis();
progress(`broker ${broker.url} (${backend})`);
const server = new StormServer({
  port: await freePort(),
  backend,
  url: broker.url,
  topic: TOPIC,
  maxEvents: 100_000,
  ...(rateLimit ? { rateLimit } : {}),
  sampleMs: SAMPLE_MS,
  backlog: Number(values.backlog),
  workers,
  scheduling: values.sched === 'rr' ? 'rr' : 'none',
});
const generators: LoadGenerator[] = [];

function failFast(): void {
  if (server.crashes.length > 0) throw new Error(server.crashes.join('; '));
  for (const g of generators) if (g.fatal !== undefined) throw new Error(g.fatal);
}

/** The broker's pid, found by its port in /proc (for the CPU accounting only). */
function brokerPid(): number | undefined {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (cmdline[0]?.includes(`${broker.kind}-server`) && cmdline.includes(String(broker.port))) {
        return Number(entry);
      }
    } catch {
      // gone
    }
  }
  return undefined;
}

// The publisher: another server of the fleet, publishing through the broker the whole time, so
// that events are published while the storm's server is down.
async function createPublisherPubSub(): Promise<PubSubClient> {
  const h = history ? { history: { maxEvents: 100_000 } } : {};
  if (broker.kind === 'nats') {
    const { NatsPubSub } = await import('../lib/pubsub/nats.js');
    return new NatsPubSub({ servers: broker.url, onError: () => undefined, ...h });
  }
  const { RedisPubSub } = await import('../lib/pubsub/redis.js');
  return new RedisPubSub({ url: broker.url, onError: () => undefined, ...h });
}
const publisherPubSub = await createPublisherPubSub();
const publisher = pushMiddleware(publisherPubSub, TOPIC, { plugins: [] });
await publisher.ready;

let seq = -1; // the last sequence stored by the broker
let publishFailures = 0;
let publishing = true;
const publishLoop = (async () => {
  let tick = 0;
  while (publishing) {
    const next = seq + 1;
    // Every fourth tick also an event the clients' push config excludes.
    const events = [{ identity: STORM_IDENTITY, type: 'tick', entity: { seq: next } }];
    if (tick++ % 4 === 0)
      events.push({ identity: EXCLUDED_IDENTITY, type: 'tick', entity: { seq: next } });
    try {
      await publisher.publish(...events);
      seq = next; // retried with the same sequence until stored: the sequences stay contiguous
    } catch {
      publishFailures++;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000 / publishRate));
  }
})();

// ---------------------------------------------------------------------------------------------
// Measurement helpers.

function reports(): LoadReport[] {
  return generators.map((g) => g.latest).filter((r): r is LoadReport => r !== undefined);
}
function sum(pick: (r: LoadReport) => number): number {
  if (reports().length < generators.length) return 0;
  return reports().reduce((a, r) => a + pick(r), 0);
}
function minSeq(): number {
  const rs = reports();
  if (rs.length < generators.length) return -1;
  return Math.min(...rs.map((r) => r.minSeq));
}
function refusals(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of reports())
    for (const [k, v] of Object.entries(r.refusals)) out[k] = (out[k] ?? 0) + v;
  return out;
}
/** Client-side totals sampled alongside the server's, for the plot. */
const clientTimeline: Array<{ t: number; open: number; reopened: number; recovered: number }> = [];
const timelineTimer = setInterval(() => {
  if (reports().length === generators.length && generators.length > 0) {
    clientTimeline.push({
      t: Date.now(),
      open: sum((r) => r.open),
      reopened: sum((r) => r.reopened),
      recovered: sum((r) => r.recovered),
    });
  }
}, 250);

/** CPU of the server: its process and, in a cluster, its workers. */
function serverCpuMs(): number {
  return [server.pid, ...childrenOf(server.pid)].reduce((a: number, p) => a + processCpuMs(p), 0);
}

interface CpuMark {
  at: number;
  machine: { busy: number; total: number };
  ours: number;
}
function cpuMark(): CpuMark {
  const usage = process.cpuUsage();
  const ours =
    serverCpuMs() +
    generators.reduce((a, g) => a + processCpuMs(g.child.pid), 0) +
    processCpuMs(brokerPid()) +
    (usage.user + usage.system) / 1000;
  return { at: Date.now(), machine: machineCpuMs(), ours };
}
/** The machine's busy share over a window, and the part not ours (other engineers' runs). */
function cpuBetween(a: CpuMark, b: CpuMark, killedCpuMs: number): ScenarioResult['cpu'] {
  const wall = b.at - a.at;
  const cores = (b.machine.total - a.machine.total) / wall;
  const busy = (b.machine.busy - a.machine.busy) / wall;
  // A killed process's CPU is gone from /proc at the end: it is added back, as read at the kill.
  const ours = (b.ours - a.ours + killedCpuMs) / wall;
  return {
    cores: round(cores, 2),
    machineBusyCores: round(busy, 2),
    othersCores: round(Math.max(0, busy - ours), 2),
  };
}
function round(n: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** Figures over the server samples in [from, to]. */
function serverFigures(
  from: number,
  to: number,
): Pick<
  ScenarioResult,
  | 'peakAcceptsPerSecond'
  | 'peakAcceptsPer100ms'
  | 'loopDelayMaxMs'
  | 'loopDelayP99Ms'
  | 'peakRssMiB'
  | 'peakHeapMiB'
  | 'minSessions'
> {
  const window = server.samples.filter((s) => s.t >= from && s.t <= to);
  let peak100 = 0;
  const perSample: Array<{ t: number; accepts: number }> = [];
  for (let i = 1; i < window.length; i++) {
    const a = window[i - 1] as (typeof window)[number];
    const b = window[i] as (typeof window)[number];
    // A restarted server's counters start again at 0.
    const accepts = b.accepted >= a.accepted ? b.accepted - a.accepted : b.accepted;
    perSample.push({ t: b.t, accepts });
    peak100 = Math.max(peak100, (accepts * 1000) / Math.max(1, b.t - a.t));
  }
  let peak1s = 0;
  for (let i = 0; i < perSample.length; i++) {
    let total = 0;
    const start = (perSample[i] as { t: number }).t;
    for (let j = i; j < perSample.length && (perSample[j] as { t: number }).t < start + 1000; j++) {
      total += (perSample[j] as { accepts: number }).accepts;
    }
    peak1s = Math.max(peak1s, total);
  }
  const delays = window.map((s) => s.loopDelayMax).sort((x, y) => x - y);
  return {
    peakAcceptsPerSecond: peak1s,
    peakAcceptsPer100ms: Math.round(peak100),
    loopDelayMaxMs: round(delays[delays.length - 1] ?? 0),
    loopDelayP99Ms: round(
      delays[Math.min(delays.length - 1, Math.floor(delays.length * 0.99))] ?? 0,
    ),
    peakRssMiB: round(Math.max(0, ...window.map((s) => s.rss)) / 2 ** 20),
    peakHeapMiB: round(Math.max(0, ...window.map((s) => s.heapUsed)) / 2 ** 20),
    minSessions: Math.min(...window.map((s) => s.sessions)),
  };
}

function allBack(): boolean {
  const last = server.last;
  return (
    last !== undefined &&
    last.sessions === sessions &&
    last.configured === sessions &&
    sum((r) => r.reopened) === sessions &&
    (!history || sum((r) => r.recovered) === sessions)
  );
}

async function verification(lastSeq: number): Promise<LoadVerification> {
  const parts = await Promise.all(
    generators.map((g) => g.ask({ type: 'verify', lastSeq }, 'verification')),
  );
  const total: LoadVerification = { clients: 0, complete: 0, ...noCounts() };
  for (const { verification: v } of parts) addVerification(total, v);
  return total;
}

// ---------------------------------------------------------------------------------------------
// The run.

const results: StormResults = {
  date: new Date().toISOString(),
  command: `npm run bench:storm -- ${process.argv.slice(2).join(' ')}`.trim(),
  options: {
    sessions,
    loadgens,
    workers,
    scheduling: values.sched === 'rr' ? 'rr' : 'none',
    backend,
    rateLimit: rateLimit ?? null,
    clientsPerAddress: Number(values['clients-per-address']),
    downMs,
    publishRate,
    minDelay: Number(values['min-delay']),
    maxDelay: Number(values['max-delay']),
    backlog: Number(values.backlog),
  },
  machine: { loadavgAtStart: loadavg().map((n) => round(n, 2)), cpuAccounting: 2 },
  scenarios: [],
  crashes: [],
};

try {
  await server.start();
  progress(
    `server on :${server.config.port}, ${workers} process(es)${rateLimit ? `, rate limit ${rateLimit.maxAttempts}/${rateLimit.intervalMs} ms` : ''}`,
  );
  const per = Math.ceil(sessions / loadgens);
  for (let i = 0; i < loadgens; i++) {
    const clients = Math.min(per, sessions - i * per);
    generators.push(
      new LoadGenerator({
        url: `ws://127.0.0.1:${server.config.port}/api/events`,
        clients,
        firstIndex: i * per,
        clientsPerAddress: Number(values['clients-per-address']),
        rampPerSecond: Math.max(1, Math.round(Number(values.ramp) / loadgens)),
        minDelay: Number(values['min-delay']),
        maxDelay: Number(values['max-delay']),
        reportMs: 250,
      }),
    );
  }
  await until(
    () => allBack() || (server.last?.configured === sessions && sum((r) => r.open) === sessions),
    'every client connected with its config',
  );
  // Every client needs a position before the storm, so that it resumes: one event after they all connected.
  const firstSeq = seq + 1;
  await until(() => minSeq() >= firstSeq, 'every client received an event');
  progress(`${sessions} sessions connected and configured; events flow (seq ${seq})`);

  for (const scenario of scenarios) {
    for (const g of generators) g.tell({ type: 'mark' });
    await until(() => sum((r) => r.reopened) === 0, 'the load generators marked');
    const cpuStart = cpuMark();
    const t0 = Date.now();
    let serverCpuLost = 0; // of the process killed
    let tDown: number;
    let tUp: number;
    let seqAtUp: number;
    if (scenario === 'server') {
      serverCpuLost = serverCpuMs(); // gone from /proc once killed
      await server.kill();
      tDown = Date.now();
      progress(`server SIGKILLed; restarting in ${downMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, downMs));
      const restartAt = Date.now();
      await server.start();
      tUp = Date.now();
      seqAtUp = seq;
      progress(`server listening again after ${tUp - restartAt} ms of start-up`);
      await until(
        allBack,
        'every session back with its config' + (history ? ' and recovered' : ''),
      );
    } else {
      serverCpuLost = processCpuMs(brokerPid()); // the broker's, likewise
      await broker.kill();
      tDown = Date.now();
      progress(`broker SIGKILLed; restarting in ${downMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, downMs));
      await broker.restart();
      tUp = Date.now();
      seqAtUp = seq;
      progress('broker accepting connections again');
    }
    // Back means also caught up: an event published after the restart reached every client.
    const target = Math.max(seqAtUp, seq) + 1;
    await until(() => seq >= target && minSeq() >= target, `every client received event ${target}`);
    const tCaughtUp = Date.now();
    const backAt =
      scenario === 'server'
        ? (server.samples.find(
            (s) => s.t >= tUp && s.sessions === sessions && s.configured === sessions,
          )?.t ?? Date.now())
        : tUp;
    const recoveredAt =
      clientTimeline.find(
        (p) => p.t >= tUp && p.reopened === sessions && (!history || p.recovered === sessions),
      )?.t ?? tCaughtUp;
    const tEnd = Date.now();
    const figures = serverFigures(tUp, tEnd);
    const cpuEnd = cpuMark();
    const result: ScenarioResult = {
      scenario,
      downMs: tUp - tDown,
      backMs: scenario === 'server' ? backAt - t0 : 0,
      recoveredMs: scenario === 'server' ? recoveredAt - t0 : 0,
      caughtUpMs: tCaughtUp - t0,
      ...figures,
      refused429: server.last?.refused429 ?? 0,
      refusedByClients: refusals(),
      retries: sum((r) => r.retries),
      publishFailures,
      cpu: cpuBetween(cpuStart, cpuEnd, serverCpuLost),
      t0,
      tDown,
      tUp,
    };
    results.scenarios.push(result);
    progress(
      `${scenario}: back ${result.backMs} ms, recovered ${result.recoveredMs} ms, caught up ${result.caughtUpMs} ms, peak ${result.peakAcceptsPerSecond} accepts/s, loop delay max ${result.loopDelayMaxMs} ms, 429s ${result.refused429}`,
    );
  }

  publishing = false;
  await publishLoop;
  const lastSeq = seq;
  await until(() => minSeq() >= lastSeq, `every client received the last event ${lastSeq}`);
  const v = await verification(lastSeq);
  results.verification = { ...v, lastSeq };
  progress(
    `verification: ${v.complete}/${v.clients} complete, ${v.missing} missing, ${v.duplicates} duplicates, ${v.excluded} excluded events after the first connection (${v.excludedFirst} before), ${v.recoveries} recoveries (${v.recoveriesFalse} false)${v.example ? `; ${v.example}` : ''}`,
  );
} catch (error) {
  results.failure = String(error);
  progress(`FAILED: ${String(error)}`);
} finally {
  publishing = false;
  clearInterval(timelineTimer);
  results.crashes = [...server.crashes];
  results.timeline = {
    server: server.samples.map((s) => ({
      t: s.t,
      sessions: s.sessions,
      configured: s.configured,
      accepted: s.accepted,
      loopDelayMax: round(s.loopDelayMax),
    })),
    clients: clientTimeline,
  };
  await Promise.allSettled(generators.map((g) => g.ask({ type: 'close' }, 'closed', 20_000)));
  await server.stop();
  await publisher.close();
  await publisherPubSub.disconnect();
  await broker.stop();
}

writeFileSync(`${values.out}.json`, `${JSON.stringify(results, null, 1)}\n`);
writeFileSync(`${values.out}.md`, stormMarkdown(results, `${basename(values.out)}.svg`));
writeFileSync(`${values.out}.svg`, stormSvg(results));
progress(`wrote ${values.out}.json, .md, .svg`);
const defects = stormDefects(results);
for (const defect of defects) progress(`FAILED: ${defect}`);
process.exit(defects.length === 0 ? 0 : 1);
