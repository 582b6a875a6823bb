/**
 * The backends benchmark (issue 3): delivered events per second and
 * publish-to-receive latency through NATS and Redis, against the in-memory
 * LocalPubSub, in one run, with the same load and the same clients.
 *
 *   npm run bench:backends                       # 500 sessions, 200-byte entity, 3 repetitions
 *   tsx bench/backends.ts --sessions 100 --reps 1
 *   NATS_URL=nats://… REDIS_URL=redis://… tsx bench/backends.ts   # brokers of your own
 *
 * This process is the server: one Express app with pushwire per backend,
 * each on its own topic, all up for the whole run, so that one repetition
 * measures the three backends back to back (local, NATS, Redis; then NATS,
 * Redis, local…): slow phases of a shared machine hit all of them alike,
 * and each broker backend is compared with the local run of the same
 * repetition. The sessions (JSON, `ws` clients) live in a child process
 * (the same file, `--child`), so that reading does not compete with the
 * server's event loop. Brokers are `nats-server` and `redis-server`
 * started on free ports, unless NATS_URL / REDIS_URL are set.
 *
 * Two phases per backend and repetition:
 * - throughput: `--events` events published back to back in batches of
 *   `--batch` (yielding to I/O between batches, as a server between
 *   requests); delivered events/s = events × sessions / time from the
 *   first publish to the last session's last event;
 * - latency: `--latency-events` events at `--rate` per second (well below
 *   capacity, so that it measures the path, not a queue), each stamped with
 *   its publish time; the child records receive − publish for every
 *   (event, session) pair: p50 and p99. It includes the client's own work
 *   for the sessions before it, the same for every backend.
 *
 * Targets (reported, not asserted): a broker backend delivers at least 0.9×
 * the in-memory rate and adds at most 2 ms to the median latency.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { PubSubClient, PushMiddleware } from '../lib/index.js';

/** High-resolution wall-clock milliseconds: comparable between processes of one machine. */
function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

// ---------------------------------------------------------------------------------------------
// The protocol between the server (parent) and the client child.

type ToChild =
  | { type: 'connect'; backend: string; url: string; sessions: number }
  | { type: 'count'; backend: string; expected: number }
  | { type: 'latency'; backend: string; expected: number }
  | { type: 'exit' };

type FromChild =
  | { type: 'connected'; backend: string }
  | { type: 'armed'; backend: string }
  | { type: 'counted'; backend: string; doneAt: number }
  | {
      type: 'latencies';
      backend: string;
      p50: number;
      p99: number;
      /** The median, over events, of the latency to the first session: the path without the fan-out. */
      firstP50: number;
      samples: number;
    }
  | { type: 'error'; message: string };

// ---------------------------------------------------------------------------------------------
// The client child.

async function runChild(): Promise<void> {
  const { default: WebSocket } = await import('ws');
  const send = (message: FromChild): void => {
    process.send?.(message);
  };
  interface Group {
    sockets: InstanceType<typeof WebSocket>[];
    counts: Int32Array;
    mode: 'idle' | 'count' | 'latency';
    expected: number;
    complete: number;
    latencies: number[];
    /** Per event (by seq), the latency of the first session that received it. */
    first: Map<number, number>;
  }
  const groups = new Map<string, Group>();

  const finish = (backend: string, group: Group): void => {
    if (group.mode === 'count') {
      send({ type: 'counted', backend, doneAt: nowMs() });
    } else if (group.mode === 'latency') {
      const quantile = (values: Iterable<number>, q: number): number => {
        const sorted = Float64Array.from(values).sort();
        return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
      };
      send({
        type: 'latencies',
        backend,
        p50: quantile(group.latencies, 0.5),
        p99: quantile(group.latencies, 0.99),
        firstP50: quantile(group.first.values(), 0.5),
        samples: group.latencies.length,
      });
    }
    group.mode = 'idle';
  };

  process.on('message', (message: ToChild) => {
    switch (message.type) {
      case 'connect': {
        const group: Group = {
          sockets: [],
          counts: new Int32Array(message.sessions),
          mode: 'idle',
          expected: 0,
          complete: 0,
          latencies: [],
          first: new Map(),
        };
        groups.set(message.backend, group);
        let open = 0;
        for (let i = 0; i < message.sessions; i++) {
          const ws = new WebSocket(message.url, { perMessageDeflate: false });
          group.sockets.push(ws);
          ws.on('open', () => {
            if (++open === message.sessions) send({ type: 'connected', backend: message.backend });
          });
          ws.on('error', (error) =>
            send({ type: 'error', message: `session ${i}: ${error.message}` }),
          );
          ws.on('message', (data: Buffer) => {
            if (group.mode === 'idle') return;
            if (group.mode === 'latency') {
              // Only this phase reads the payload: the throughput phase only counts.
              const { entity } = JSON.parse(data.toString()) as {
                entity: { sentAt: number; seq: number };
              };
              const latency = nowMs() - entity.sentAt;
              group.latencies.push(latency);
              if (!group.first.has(entity.seq)) group.first.set(entity.seq, latency);
            }
            if (++(group.counts[i] as number) === group.expected) {
              if (++group.complete === group.sockets.length) finish(message.backend, group);
            }
          });
        }
        break;
      }
      case 'count':
      case 'latency': {
        const group = groups.get(message.backend);
        if (!group) throw new Error(`no sessions for ${message.backend}`);
        group.counts.fill(0);
        group.complete = 0;
        group.latencies = [];
        group.first = new Map();
        group.expected = message.expected;
        group.mode = message.type;
        // The parent publishes only after this: an event before it would not be counted.
        send({ type: 'armed', backend: message.backend });
        break;
      }
      case 'exit':
        for (const group of groups.values()) for (const ws of group.sockets) ws.terminate();
        process.exit(0);
    }
  });
  process.on('disconnect', () => process.exit(0));
}

// ---------------------------------------------------------------------------------------------
// The server: the orchestrator.

interface Options {
  sessions: number;
  entityBytes: number;
  events: number;
  latencyEvents: number;
  rate: number;
  reps: number;
  batch: number;
}

interface Measurement {
  backend: string;
  rep: number;
  deliveredPerSecond: number;
  p50: number;
  p99: number;
  /** Median latency to the first session of each event. */
  firstP50: number;
  dropped: number;
}

async function runServer(options: Options): Promise<void> {
  const [{ default: express }, { default: expressWs }, lib, nats, redis, brokers] =
    await Promise.all([
      import('express'),
      import('express-ws'),
      import('../lib/index.js'),
      import('../lib/pubsub/nats.js'),
      import('../lib/pubsub/redis.js'),
      import('../test/helpers/brokers.js'),
    ]);

  // Brokers: the ones given, or our own on free ports.
  const started: Array<{ stop(): Promise<void> }> = [];
  let natsUrl = process.env.NATS_URL;
  let redisUrl = process.env.REDIS_URL;
  if (!natsUrl) {
    const broker = await brokers.startNats();
    started.push(broker);
    natsUrl = broker.url;
  }
  if (!redisUrl) {
    const broker = await brokers.startRedis();
    started.push(broker);
    redisUrl = broker.url;
  }

  interface Target {
    name: string;
    pubsub: PubSubClient;
    push: PushMiddleware;
    server: Server;
    url: string;
  }
  const start = async (name: string, pubsub: PubSubClient): Promise<Target> => {
    const app = express();
    const ews = expressWs(app);
    // Each backend on its own topic: only the backend being measured has traffic.
    const push = lib.pushMiddleware(pubsub, `bench.${name}`, { pingInterval: 0, plugins: [] });
    app.use('/api', push);
    push.attach(ews);
    await push.ready;
    const server = app.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as AddressInfo;
    return { name, pubsub, push, server, url: `ws://127.0.0.1:${port}/api/events?encoding=json` };
  };
  const targets = [
    await start('local', new lib.LocalPubSub()),
    await start('nats', new nats.NatsPubSub({ servers: natsUrl })),
    await start('redis', new redis.RedisPubSub({ url: redisUrl })),
  ];

  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ['--child'], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let closing = false;
  const waiting = new Map<string, (message: FromChild) => void>();
  child.on('message', (message: FromChild) => {
    if (message.type === 'error') {
      console.error(`client child: ${message.message}`);
      return;
    }
    const key = `${message.type}:${message.backend}`;
    const resolve = waiting.get(key);
    waiting.delete(key);
    resolve?.(message);
  });
  child.once('exit', (code) => {
    if (code !== 0 && !closing) {
      console.error(`the client child exited (${String(code)})`);
      process.exit(1);
    }
  });
  /** Resolves with the child's next reply of `replyType` about `backend`, within `ms`. */
  const reply = <T extends FromChild>(
    replyType: T['type'],
    backend: string,
    ms: number,
  ): Promise<T> => {
    const promise = new Promise<T>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no ${replyType} for ${backend} within ${ms} ms`)),
        ms,
      );
      waiting.set(`${replyType}:${backend}`, (message) => {
        clearTimeout(timer);
        resolve(message as T);
      });
    });
    promise.catch(() => undefined); // awaited later; a timeout must not be an unhandled rejection
    return promise;
  };
  /** Sends a command and resolves with the child's reply of `replyType`. */
  const ask = <T extends FromChild>(
    command: ToChild & { backend: string },
    replyType: T['type'],
    ms: number,
  ): Promise<T> => {
    const answer = reply<T>(replyType, command.backend, ms);
    child.send(command);
    return answer;
  };
  /**
   * Arms the child's sessions of a backend for a phase; resolves once armed, with the pending
   * result (wrapped: an async function returning a promise would wait for it).
   */
  const arm = async <T extends FromChild>(
    command: Extract<ToChild, { type: 'count' | 'latency' }>,
    resultType: T['type'],
  ): Promise<{ result: Promise<T> }> => {
    const result = reply<T>(resultType, command.backend, 120_000);
    await ask(command, 'armed', 10_000);
    return { result };
  };

  for (const target of targets) {
    await ask(
      { type: 'connect', backend: target.name, url: target.url, sessions: options.sessions },
      'connected',
      60_000,
    );
  }

  // An entity of `entityBytes` bytes of JSON (the MessagePack form is a little smaller).
  const skeleton = JSON.stringify({ sentAt: nowMs(), seq: 0, pad: '' });
  const pad = 'x'.repeat(Math.max(0, options.entityBytes - skeleton.length));
  const event = (seq: number): { identity: string; type: string; entity: unknown } => ({
    identity: 'task',
    type: 'update',
    entity: { sentAt: nowMs(), seq, pad },
  });

  const throughput = async (target: Target, events: number): Promise<number> => {
    const { result } = await arm<Extract<FromChild, { type: 'counted' }>>(
      { type: 'count', backend: target.name, expected: events },
      'counted',
    );
    const t0 = nowMs();
    for (let seq = 0; seq < events; seq += options.batch) {
      const batch = Array.from({ length: Math.min(options.batch, events - seq) }, (_, i) =>
        event(seq + i),
      );
      await target.push.publish(...batch);
      // Yield to I/O between batches, as a server handling requests would.
      await new Promise((resolve) => setImmediate(resolve));
    }
    const { doneAt } = await result;
    return (events * options.sessions) / ((doneAt - t0) / 1000);
  };

  const latency = async (
    target: Target,
  ): Promise<{ p50: number; p99: number; firstP50: number }> => {
    const { result } = await arm<Extract<FromChild, { type: 'latencies' }>>(
      { type: 'latency', backend: target.name, expected: options.latencyEvents },
      'latencies',
    );
    const interval = 1000 / options.rate;
    const t0 = performance.now();
    for (let seq = 0; seq < options.latencyEvents; seq++) {
      // On a schedule, not after the previous delivery: a slow delivery must not slow the offer.
      const wait = t0 + seq * interval - performance.now();
      if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
      await target.push.publish(event(seq));
    }
    const { p50, p99, firstP50 } = await result;
    return { p50, p99, firstP50 };
  };

  const header =
    `pushwire backends: ${options.sessions} sessions (JSON), ${options.entityBytes}-byte entity, ` +
    `${options.events} events for throughput, ${options.latencyEvents} at ${options.rate}/s for latency, ` +
    `${options.reps} interleaved repetitions; ${cpus().length} CPUs, load ${loadavg()[0]?.toFixed(1)}; node ${process.version}`;
  console.log(header);

  // Warm-up: JIT and connection paths, not measured.
  for (const target of targets) await throughput(target, Math.min(200, options.events));

  const results: Measurement[] = [];
  for (let rep = 1; rep <= options.reps; rep++) {
    // The order rotates (local, nats, redis; then nats, redis, local…): no backend always
    // runs first, right after the warm-up, or last, after the others' garbage.
    const shift = (rep - 1) % targets.length;
    for (const target of [...targets.slice(shift), ...targets.slice(0, shift)]) {
      const before = target.push.stats();
      const delivered = await throughput(target, options.events);
      const { p50, p99, firstP50 } = await latency(target);
      const after = target.push.stats();
      const measurement: Measurement = {
        backend: target.name,
        rep,
        deliveredPerSecond: delivered,
        p50,
        p99,
        firstP50,
        dropped: after.dropped - before.dropped,
      };
      results.push(measurement);
      console.log(
        `  rep ${rep}  ${target.name.padEnd(5)}  ${Math.round(delivered).toLocaleString('en-US').padStart(11)} events/s` +
          `  p50 ${p50.toFixed(2)} ms  p99 ${p99.toFixed(2)} ms  first-session p50 ${firstP50.toFixed(2)} ms${measurement.dropped ? `  DROPPED ${measurement.dropped}` : ''}`,
      );
    }
  }

  const median = (values: number[]): number => {
    const sorted = [...values].sort((a, b) => a - b);
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2
      ? (sorted[mid] as number)
      : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
  };
  // Each repetition runs the backends back to back, so a broker backend is compared with the
  // local one of the same repetition (a paired ratio), and the verdict uses the median of those:
  // on a shared machine a slow phase moves a whole repetition, not one backend.
  const localOf = (rep: number): Measurement => {
    const found = results.find((r) => r.backend === 'local' && r.rep === rep);
    if (!found) throw new Error(`no local measurement in repetition ${rep}`);
    return found;
  };
  const summary = targets.map(({ name }) => {
    const own = results.filter((r) => r.backend === name);
    return {
      backend: name,
      deliveredPerSecond: median(own.map((r) => r.deliveredPerSecond)),
      p50: median(own.map((r) => r.p50)),
      p99: median(own.map((r) => r.p99)),
      firstP50: median(own.map((r) => r.firstP50)),
      ratio: median(own.map((r) => r.deliveredPerSecond / localOf(r.rep).deliveredPerSecond)),
      addedP50: median(own.map((r) => r.p50 - localOf(r.rep).p50)),
      dropped: own.reduce((sum, r) => sum + r.dropped, 0),
    };
  });
  console.log(
    `\nmedians of ${options.reps} repetitions (ratio and added latency: paired per repetition):`,
  );
  console.log(
    'backend  delivered events/s  vs local  p50 ms  added p50  p99 ms  first-session p50  verdict',
  );
  let pass = true;
  for (const s of summary) {
    const ok = s.backend === 'local' || (s.ratio >= 0.9 && s.addedP50 <= 2);
    if (!ok) pass = false;
    const added = `${s.addedP50 >= 0 ? '+' : '-'}${Math.abs(s.addedP50).toFixed(2)} ms`;
    console.log(
      `${s.backend.padEnd(7)}  ${Math.round(s.deliveredPerSecond).toLocaleString('en-US').padStart(18)}` +
        `  ${s.ratio.toFixed(2).padStart(7)}×  ${s.p50.toFixed(2).padStart(6)}  ${added.padStart(9)}` +
        `  ${s.p99.toFixed(2).padStart(6)}  ${s.firstP50.toFixed(2).padStart(14)} ms  ${s.backend === 'local' ? 'reference' : ok ? 'meets the target' : 'MISSES the target'}` +
        (s.dropped ? `  (${s.dropped} dropped)` : ''),
    );
  }
  console.log(
    `target (≥ 0.9× the local rate, ≤ +2 ms median latency): ${pass ? 'met' : 'not met'}`,
  );
  console.log(JSON.stringify({ options, results, summary }));

  closing = true;
  child.send({ type: 'exit' } satisfies ToChild);
  await once(child, 'exit');
  for (const target of targets) {
    await target.push.close();
    target.server.closeAllConnections();
    target.server.close();
    await target.pubsub.disconnect();
  }
  await Promise.all(started.map((broker) => broker.stop()));
}

// ---------------------------------------------------------------------------------------------

const { values } = parseArgs({
  options: {
    child: { type: 'boolean', default: false },
    sessions: { type: 'string', default: '500' },
    entity: { type: 'string', default: '200' },
    events: { type: 'string', default: '2000' },
    'latency-events': { type: 'string', default: '100' },
    rate: { type: 'string', default: '20' },
    reps: { type: 'string', default: '3' },
    batch: { type: 'string', default: '100' },
    help: { type: 'boolean', default: false },
  },
});

if (values.help) {
  console.log(
    'tsx bench/backends.ts [--sessions 500] [--entity 200] [--events 2000] [--batch 100] [--latency-events 100] [--rate 20] [--reps 3]',
  );
} else if (values.child) {
  await runChild();
} else {
  const int = (name: string, value: string | undefined): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name} must be a positive integer`);
    return n;
  };
  await runServer({
    sessions: int('sessions', values.sessions),
    entityBytes: int('entity', values.entity),
    events: int('events', values.events),
    latencyEvents: int('latency-events', values['latency-events']),
    rate: int('rate', values.rate),
    reps: int('reps', values.reps),
    batch: int('batch', values.batch),
  });
}
