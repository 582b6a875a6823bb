/**
 * One worker per core (issue 15 item 4): delivered events/s of
 * examples/cluster/per-core.ts with 1 worker and with 2, at the same session
 * count, interleaved (1, 2, 2, 1, …), through a nats-server started here.
 *
 *   npm run bench:cluster -- [--sessions 2000] [--reps 3] [--duration 5]
 *
 * The sessions live in two client children of the fan-out benchmark
 * (bench/client.ts: raw TCP, frames counted, not decoded). The publisher is
 * this process, another member of the fleet on the same topic, in a closed
 * loop: it publishes bursts while fewer than `--window` events per session
 * are in flight, so that the servers run at their maximum without their
 * buffers growing into drops. Writes bench/results/cluster.json and .md.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { pushMiddleware } from '../lib/index.js';
import { NatsPubSub } from '../lib/pubsub/nats.js';
import { freePort, startNats } from '../test/helpers/brokers.js';
import { Child, CLIENT_FILE, progress } from './children.js';
import { makeEntity, nowUs, type ClientCommand, type ClientReply } from './common.js';
import { childrenOf, machineCpuMs, processCpuMs } from './storm/processes.js';

const USAGE = `Usage: npm run bench:cluster -- [flags]

  --sessions N   sessions, shared by the workers (default 2000)
  --reps N       interleaved repetitions of each worker count (default 3)
  --warmup S     seconds of load before counting (default 2)
  --duration S   seconds counted (default 5)
  --window N     events in flight per session at most (default 100)
  --batch N      events per burst (default 20)
  --out PREFIX   results prefix (default bench/results/cluster)
  --help`;

const { values } = parseArgs({
  options: {
    sessions: { type: 'string', default: '2000' },
    reps: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '2' },
    duration: { type: 'string', default: '5' },
    window: { type: 'string', default: '100' },
    batch: { type: 'string', default: '20' },
    out: { type: 'string', default: 'bench/results/cluster' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const sessions = Number(values.sessions);
const reps = Number(values.reps);
const warmupMs = Number(values.warmup) * 1000;
const durationMs = Number(values.duration) * 1000;
const window = Number(values.window);
const batch = Number(values.batch);

const EXAMPLE = fileURLToPath(new URL('../examples/cluster/per-core.ts', import.meta.url));
const REPO = fileURLToPath(new URL('..', import.meta.url));
type ClientChild = Child<ClientCommand, ClientReply>;

/** One measurement's figures. */
interface Sample {
  workers: number;
  deliveredPerSecond: number;
  /** CPU of the primary and the workers, in cores (1 = one core busy the whole window). */
  serverCores: number;
  clientCores: number;
  machineBusyCores: number;
  /** Busy cores not accounted for by the server, the clients, this process or the broker. */
  othersCores: number;
}

/** Starts per-core.ts with `workers` workers; resolves once they all listen. */
async function startExample(workers: number, port: number, natsUrl: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', EXAMPLE], {
    cwd: REPO,
    env: { ...process.env, WORKERS: String(workers), PORT: String(port), NATS_URL: natsUrl },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('per-core did not start in 60 s')), 60_000);
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      if (line.includes(`"workers":${workers}`)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`per-core exited: code ${code}`)));
  });
  return child;
}

async function measure(
  workers: number,
  clients: ClientChild[],
  natsUrl: string,
  publisher: ReturnType<typeof pushMiddleware>,
): Promise<Sample> {
  const port = await freePort();
  const example = await startExample(workers, port, natsUrl);
  const serverPids = (): number[] => [example.pid as number, ...childrenOf(example.pid)];
  try {
    const per = Math.ceil(sessions / clients.length);
    const replies = await Promise.all(
      clients.map((client, i) =>
        client.request(
          {
            type: 'connect',
            port,
            path: '/api/events',
            protocol: 'push',
            count: Math.min(per, sessions - i * per),
            headers: {},
            config: undefined,
            slow: 0,
            concurrency: 64,
          },
          'connected',
          180_000,
        ),
      ),
    );
    const open = replies.reduce((a, r) => a + r.open, 0);
    if (open !== sessions) throw new Error(`${open} of ${sessions} sessions connected`);

    const delivered = async (): Promise<{ events: number; cpuUs: number }> => {
      const snaps = await Promise.all(
        clients.map((c) => c.request({ type: 'snapshot' }, 'snapshot')),
      );
      return {
        events: snaps.reduce((a, s) => a + s.snapshot.events, 0),
        cpuUs: snaps.reduce((a, s) => a + s.snapshot.cpuUs, 0),
      };
    };
    const base = (await delivered()).events; // the workers' hellos
    let published = 0;
    let running = true;
    // The closed loop: a burst whenever fewer than `window` events per session are in flight.
    const load = (async () => {
      while (running) {
        const { events } = await delivered();
        if (published - (events - base) / sessions < window) {
          const burst = Array.from({ length: batch }, (_, i) => ({
            identity: 'bench',
            type: 'tick',
            entity: makeEntity(published + i, nowUs()),
          }));
          await publisher.publish(...burst);
          published += batch;
        }
      }
    })();
    await new Promise((resolve) => setTimeout(resolve, warmupMs));
    const cpu0 = {
      server: serverPids().reduce((a, p) => a + processCpuMs(p), 0),
      clients: (await delivered()).cpuUs,
      machine: machineCpuMs(),
      self: process.cpuUsage(),
    };
    const start = await delivered();
    const t0 = Date.now();
    await new Promise((resolve) => setTimeout(resolve, durationMs));
    const end = await delivered();
    const t1 = Date.now();
    const server = serverPids().reduce((a, p) => a + processCpuMs(p), 0) - cpu0.server;
    const machine = machineCpuMs();
    const self = process.cpuUsage(cpu0.self);
    running = false;
    await load;
    const wall = t1 - t0;
    const clientMs = (end.cpuUs - start.cpuUs) / 1000;
    const busy = (machine.busy - cpu0.machine.busy) / wall;
    const ours = (server + clientMs + (self.user + self.system) / 1000) / wall;
    return {
      workers,
      deliveredPerSecond: Math.round(((end.events - start.events) * 1000) / wall),
      serverCores: round(server / wall),
      clientCores: round(clientMs / wall),
      machineBusyCores: round(busy),
      othersCores: round(Math.max(0, busy - ours)),
    };
  } finally {
    await Promise.all(clients.map((c) => c.request({ type: 'close' }, 'closed', 60_000)));
    const exit = once(example, 'exit');
    example.kill('SIGTERM'); // the example's graceful shutdown: every worker's push.close()
    await exit;
  }
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

const broker = await startNats();
const publisherPubSub = new NatsPubSub({ servers: broker.url });
const publisher = pushMiddleware(publisherPubSub, 'events', { plugins: [] });
await publisher.ready;
const clients: ClientChild[] = [0, 1].map(
  (i) => new Child(`client ${i}`, CLIENT_FILE, [], ['--import', 'tsx']),
);
const samples: Sample[] = [];
const loadAtStart = loadavg().map((n) => round(n));
try {
  // Interleaved, so that a neighbour's load drifting over the run hits both alike.
  const order = Array.from({ length: reps }, (_, r) => (r % 2 === 0 ? [1, 2] : [2, 1])).flat();
  for (const workers of order) {
    const sample = await measure(workers, clients, broker.url, publisher);
    samples.push(sample);
    progress(
      `${workers} worker(s): ${sample.deliveredPerSecond.toLocaleString('en')} delivered/s, server ${sample.serverCores} cores, clients ${sample.clientCores}, machine busy ${sample.machineBusyCores} (others ${sample.othersCores})`,
    );
  }
} finally {
  await Promise.all(clients.map((c) => c.stop()));
  await publisher.close();
  await publisherPubSub.disconnect();
  await broker.stop();
}

const of = (w: number, pick: (s: Sample) => number): number =>
  median(samples.filter((s) => s.workers === w).map(pick));
const one = of(1, (s) => s.deliveredPerSecond);
const two = of(2, (s) => s.deliveredPerSecond);
const ratios = samples
  .filter((s) => s.workers === 2)
  .map(
    (s, i) =>
      s.deliveredPerSecond / (samples.filter((x) => x.workers === 1)[i]?.deliveredPerSecond ?? NaN),
  );
const command = `npm run bench:cluster -- ${process.argv.slice(2).join(' ')}`.trim();
const results = {
  date: new Date().toISOString(),
  command,
  options: { sessions, reps, warmupMs, durationMs, window, batch },
  machine: { loadavgAtStart: loadAtStart },
  samples,
  medians: {
    oneWorker: one,
    twoWorkers: two,
    ratio: round(two / one),
    ratioPerRepetition: ratios.map(round),
  },
};
writeFileSync(`${values.out}.json`, `${JSON.stringify(results, null, 1)}\n`);
const rows = samples
  .map(
    (s) =>
      `| ${s.workers} | ${s.deliveredPerSecond.toLocaleString('en')} | ${s.serverCores} | ${s.clientCores} | ${s.machineBusyCores} | ${s.othersCores} |`,
  )
  .join('\n');
writeFileSync(
  `${values.out}.md`,
  [
    `# One worker per core: ${sessions.toLocaleString('en')} sessions, 1 worker against 2`,
    '',
    `\`${command}\` — ${results.date}; examples/cluster/per-core.ts on core NATS, 200-byte entity, JSON; ` +
      `closed-loop load (≤ ${window} events in flight per session, bursts of ${batch}); ${durationMs / 1000} s counted after ${warmupMs / 1000} s; ` +
      `load average at start ${loadAtStart.join(' / ')}.`,
    '',
    `Medians: **1 worker ${one.toLocaleString('en')} delivered events/s, 2 workers ${two.toLocaleString('en')}: ${round(two / one)}×** ` +
      `(per interleaved pair: ${ratios.map((r) => `${round(r)}×`).join(', ')}).`,
    '',
    '| workers | delivered events/s | server cores (primary + workers) | client cores | machine busy cores | not ours |',
    '| ---: | ---: | ---: | ---: | ---: | ---: |',
    rows,
    '',
  ].join('\n'),
);
progress(
  `1 worker ${one}/s, 2 workers ${two}/s: ${round(two / one)}×; wrote ${values.out}.json, .md`,
);
