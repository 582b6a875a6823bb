/**
 * One server under test, in its own process so that its CPU time and RSS
 * are its own: pushwire (Express 5, express-ws, LocalPubSub), socket.io 4,
 * or the raw `ws` loop. The orchestrator starts one per measurement, with a
 * {@link ServerSpec} as JSON in argv[2], and drives it over IPC. The load
 * generator runs here too, as the application's publisher would: its cost
 * is in every mode's CPU figure alike.
 *
 *   node --import tsx --expose-gc bench/server.ts '{"mode":"raw",...}'
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { getHeapStatistics, writeHeapSnapshot } from 'node:v8';
import express from 'express';
import jaeger from 'jaeger-client';
import { tracingPlugin } from '../plugins/tracing/index.js';
import expressWs from 'express-ws';
import { Server as SocketIoServer, type Socket as SocketIoSocket } from 'socket.io';
import {
  authPlugin,
  dispatchPlugin,
  LocalPubSub,
  pushMiddleware,
  type Plugin,
  type PushMiddleware,
} from '../lib/index.js';
import {
  makeEntity,
  nowMs,
  nowUs,
  toParent,
  type ServerCommand,
  type ServerLimits,
  type ServerSnapshot,
  type ServerSpec,
} from './common.js';
import { acceptRawSessions } from './raw-loop.js';

/** What the orchestrator needs from each kind of server. */
interface Target {
  /** The path clients connect to (with its query). */
  path: string;
  /** Publishes event `seq` to every session, stamped with the send time. */
  publish(seq: number): void;
  /** Sessions open now, as the server counts them. */
  sessions(): number;
  /** Sessions with more than `bytes` waiting to be written, counted up to `limit`. */
  backlogged(bytes: number, limit: number): number;
  /** Events the server dropped for slow consumers. */
  dropped(): number;
  /** With history (pushwire): publishes `count` events, resolves once all are stored. */
  fillHistory?(count: number): Promise<{ since: string; stored: number }>;
}

const spec = JSON.parse(process.argv[2] ?? '{}') as ServerSpec;

/**
 * Errors of the listening servers: accept() failing past the file-descriptor limit (EMFILE) is
 * what the scale phase looks for. Listened to on every mode's server, since an 'error' nobody
 * listens to would end this process and hide how many sessions it held.
 */
let serverErrors = 0;
let firstServerError: string | undefined;
function watchErrors(server: Server): void {
  server.on('error', (error: NodeJS.ErrnoException) => {
    serverErrors++;
    firstServerError ??= `${error.code ?? 'error'}: ${error.message}`;
  });
}

/**
 * The RSS, or -1 when it cannot be read. Why not throw: Node reads it from /proc/self/stat, which
 * takes a file descriptor, so at the open-file limit process.memoryUsage() throws EMFILE; the
 * scale phase then reads /proc/<pid>/status from the orchestrator instead.
 */
function rss(): number {
  try {
    return process.memoryUsage.rss();
  } catch {
    return -1;
  }
}

/** The file descriptors this process holds and may hold (Linux; -1 elsewhere). */
function limits(): ServerLimits {
  let fds = -1;
  let fdLimit = -1;
  try {
    fds = readdirSync('/proc/self/fd').length;
    const line = readFileSync('/proc/self/limits', 'latin1')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    fdLimit = Number(line?.split(/\s{2,}/)[1] ?? -1);
  } catch {
    // Not Linux: the scale phase reports the limit as unknown.
  }
  return { fds, fdLimit, serverErrors, firstServerError };
}
const IDENTITY = 'task';
const TYPE = 'create';

/** Sockets of upgraded connections, to read what each has waiting (writableLength). */
function trackUpgrades(server: Server): Set<Socket> {
  const sockets = new Set<Socket>();
  // One listener for every socket: a once() wrapper and a closure per socket cost ~200 bytes
  // each, which the scale phase charged to the server under test (issue 15).
  function forget(this: Socket): void {
    sockets.delete(this);
  }
  // Listening to 'upgrade' next to the library's own listener sees every WebSocket socket.
  server.on('upgrade', (_req: IncomingMessage, socket: Duplex) => {
    const s = socket as Socket;
    sockets.add(s);
    s.on('close', forget);
  });
  // And an event-stream request's socket is the stream's (pushwire-sse).
  server.on('request', (req: IncomingMessage) => {
    if (req.headers.accept !== 'text/event-stream') return;
    const s = req.socket;
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  return sockets;
}

function countBacklogged(sockets: Iterable<Socket>, bytes: number, limit: number): number {
  let count = 0;
  for (const socket of sockets) {
    if (socket.writableLength > bytes && ++count >= limit) break;
  }
  return count;
}

async function listen(server: Server): Promise<number> {
  watchErrors(server);
  server.listen(0, '127.0.0.1', 4096);
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

// ---------------------------------------------------------------------------
// pushwire

/**
 * The per-session work of the `dispatch` variants: an auth plugin sets a
 * claim once per session, and a synchronous `shouldDispatch` reads it for
 * every (event, session), as a tenant check does.
 */
function dispatchPlugins(): Plugin[] {
  return [
    authPlugin((session) => {
      session.setClaims(['org=acme', 'role=viewer']);
      return 'ok';
    }),
    dispatchPlugin({ shouldDispatch: (session) => session.claimsMap.org === 'acme' }),
  ];
}

async function startPushwire(): Promise<{ target: Target; port: number }> {
  const app = express();
  const ews = expressWs(app);
  const withDispatch = spec.variant === 'dispatch' || spec.variant === 'config+dispatch';
  const plugins = withDispatch ? dispatchPlugins() : [];
  if (spec.variant === 'tracing-unsampled') {
    // Issue 4's "no cost when off": a real jaeger tracer whose sampler samples nothing.
    const tracer = jaeger.initTracer(
      { serviceName: 'pushwire-bench', sampler: { type: 'const', param: 0 } },
      { logger: { info: () => undefined, error: () => undefined } },
    );
    plugins.unshift(tracingPlugin({ tracer }));
  }
  const bus = new LocalPubSub(
    spec.historyMaxEvents === undefined ? {} : { history: { maxEvents: spec.historyMaxEvents } },
  );
  const push: PushMiddleware = pushMiddleware(bus, 'events', { plugins });
  app.use('/api', push);
  push.attach(ews);
  await push.ready;
  const server = app.listen(0, '127.0.0.1', 4096) as Server;
  watchErrors(server);
  await once(server, 'listening');
  const sockets = trackUpgrades(server);
  let failures = 0;
  const target: Target = {
    path: '/api' + push.endpoint,
    publish(seq) {
      push
        .publish({ identity: IDENTITY, type: TYPE, entity: makeEntity(seq, nowUs()) })
        .catch(() => {
          // Counted, not thrown: a failed publish shows as missing deliveries.
          failures++;
        });
    },
    sessions: () => push.stats().sessionsOpen,
    backlogged: (bytes, limit) => countBacklogged(sockets, bytes, limit),
    dropped: () => push.stats().dropped + failures,
    async fillHistory(count) {
      const history = bus.history;
      if (history === undefined) throw new Error('fill-history: this server keeps no history');
      const published: Array<Promise<void>> = [];
      for (let seq = 0; seq < count; seq++) {
        published.push(
          push.publish({ identity: IDENTITY, type: TYPE, entity: makeEntity(seq, nowUs()) }),
        );
      }
      await Promise.all(published);
      // The first event's position: a session resuming from it is replayed the other count - 1.
      // `<epoch>:0` is before a root's first event (LocalHistory's positions count from 1).
      const first = await history.read('events', `${history.epoch}:0`, 1);
      const since = first.entries[0]?.position;
      if (since === undefined) throw new Error('fill-history: nothing was stored');
      return { since, stored: history.size('events') };
    },
  };
  return { target, port: (server.address() as AddressInfo).port };
}

// ---------------------------------------------------------------------------
// socket.io

/** engine.io's per-client state that shows what it holds back (not in its types). */
interface EngineClientInternals {
  writeBuffer: unknown[];
  transport?: { socket?: { _socket?: Socket } };
}

async function startSocketIo(): Promise<{ target: Target; port: number }> {
  const server = createServer();
  const io = new SocketIoServer(server, {
    transports: ['websocket'],
    serveClient: false,
    perMessageDeflate: false,
  });
  const engineClients = new Set<EngineClientInternals>();
  io.on('connection', (socket: SocketIoSocket) => {
    const engineClient = socket.conn as unknown as EngineClientInternals;
    engineClients.add(engineClient);
    socket.on('disconnect', () => engineClients.delete(engineClient));
  });
  const port = await listen(server);
  let frameBytes = 0;
  const target: Target = {
    path: '/socket.io/?EIO=4&transport=websocket',
    publish(seq) {
      const event = {
        entity: makeEntity(seq, nowUs()),
        identity: IDENTITY,
        type: TYPE,
        timestamp: new Date().toISOString(),
        encoding: 'application/json',
      };
      if (frameBytes === 0) frameBytes = JSON.stringify(['event', event]).length + 6;
      io.emit('event', event);
    },
    sessions: () => io.of('/').sockets.size,
    backlogged(bytes, limit) {
      // engine.io holds packets in its own buffer while a write is in flight: count both.
      let count = 0;
      for (const client of engineClients) {
        const waiting =
          client.writeBuffer.length * frameBytes +
          (client.transport?.socket?._socket?.writableLength ?? 0);
        if (waiting > bytes && ++count >= limit) break;
      }
      return count;
    },
    dropped: () => 0,
  };
  return { target, port };
}

// ---------------------------------------------------------------------------
// The raw ws loop: the practical limit

/** An unmasked final text frame (RFC 6455 section 5.2). */
function textFrame(text: string): Buffer {
  const payload = Buffer.from(text, 'utf8');
  const length = payload.length;
  const header = length < 126 ? 2 : length < 65536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(header + length);
  frame[0] = 0x81;
  if (length < 126) frame[1] = length;
  else if (length < 65536) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 127;
    frame.writeUInt32BE(0, 2);
    frame.writeUInt32BE(length, 6);
  }
  payload.copy(frame, header);
  return frame;
}

async function startRaw(): Promise<{ target: Target; port: number }> {
  const server = createServer();
  const sockets = acceptRawSessions(server);
  const port = await listen(server);
  // The frames of this turn: built once each, then one write of all of them per socket.
  let pending: Buffer[] = [];
  const flush = (): void => {
    const frames = pending;
    pending = [];
    const data = frames.length === 1 ? (frames[0] as Buffer) : Buffer.concat(frames);
    for (const socket of sockets) {
      if (socket.writable) socket.write(data);
    }
  };
  const target: Target = {
    path: '/raw',
    publish(seq) {
      const text =
        '{"entity":' +
        JSON.stringify(makeEntity(seq, nowUs())) +
        ',"identity":"' +
        IDENTITY +
        '","type":"' +
        TYPE +
        '","timestamp":"' +
        new Date().toISOString() +
        '","encoding":"application/json"}';
      if (pending.length === 0) process.nextTick(flush);
      pending.push(textFrame(text));
    },
    sessions: () => sockets.size,
    backlogged: (bytes, limit) => countBacklogged(sockets, bytes, limit),
    dropped: () => 0,
  };
  return { target, port };
}

// ---------------------------------------------------------------------------
// The load generator and the IPC loop

async function main(): Promise<void> {
  const { target, port } =
    spec.mode === 'socketio'
      ? await startSocketIo()
      : spec.mode === 'raw'
        ? await startRaw()
        : await startPushwire();

  let seq = 0;
  let published = 0;
  let backlogWaits = 0;
  let running = false;
  let timer: NodeJS.Timeout | undefined;
  let rssTimer: NodeJS.Timeout | undefined;
  const rssSamples: Array<[number, number]> = [];

  const publishOne = (): void => {
    target.publish(seq++);
    published++;
  };

  // Maximum load: a burst per turn, as a busy server reads several events from its broker at
  // once; it waits while more than 2% of sessions are backlogged, so a handful of slow
  // consumers (1%) do not pace the rest, and the others are never pushed into dropping.
  const loopMax = (): void => {
    if (!running) return;
    const sessions = target.sessions();
    const limit = Math.floor(sessions * 0.02) + 1;
    if (target.backlogged(spec.highWater, limit) >= limit) {
      backlogWaits++;
      timer = setTimeout(loopMax, 1);
      return;
    }
    for (let i = 0; i < spec.batch; i++) publishOne();
    setImmediate(loopMax);
  };

  // Fixed load: `rate` events per second in bursts of `batch`, the shape the maximum load was
  // measured with, so that half its rate is half its load (events written one per turn cost
  // several times more per delivery: nothing coalesces). Open loop: a late turn publishes the
  // bursts it owes, at most 50 ms worth; a server that cannot keep up skips the rest (counted:
  // its achieved rate shows it) rather than owing ever more and answering minutes late.
  let skipped = 0;
  const loopRate = (rate: number, startMs: number): void => {
    if (!running) return;
    const burst = spec.batch;
    const owed = Math.floor(((nowMs() - startMs) * rate) / 1000) - published - skipped;
    let due = Math.floor(owed / burst) * burst;
    const most = Math.max(burst, Math.ceil((rate * 0.05) / burst) * burst);
    if (due > most) {
      skipped += due - most;
      due = most;
    }
    for (let i = 0; i < due; i++) publishOne();
    const nextDueMs = startMs + ((published + skipped + burst) * 1000) / rate;
    timer = setTimeout(() => loopRate(rate, startMs), Math.max(0, nextDueMs - nowMs()));
  };

  const gc = (globalThis as { gc?: () => void }).gc;
  const snapshot = (): ServerSnapshot => {
    const cpu = process.cpuUsage();
    return {
      cpuUs: cpu.user + cpu.system,
      cpuSystemUs: cpu.system,
      timeMs: nowMs(),
      rss: rss(),
      published,
      nextSeq: seq,
      dropped: target.dropped(),
      backlogWaits,
    };
  };

  process.on('message', (message: ServerCommand) => {
    switch (message.type) {
      case 'memory': {
        // Twice: the first pass can leave garbage that only a second one frees.
        gc?.();
        gc?.();
        // V8's own figures need no file descriptor (see rss()).
        const heap = getHeapStatistics();
        toParent({
          type: 'memory',
          rss: rss(),
          heapUsed: heap.used_heap_size,
          heapTotal: heap.total_heap_size,
          external: heap.external_memory,
        });
        break;
      }
      case 'snapshot':
        toParent({ type: 'snapshot', snapshot: snapshot() });
        break;
      case 'sessions':
        toParent({ type: 'sessions', count: target.sessions() });
        break;
      case 'load-max':
        running = true;
        setImmediate(loopMax);
        toParent({ type: 'load-started' });
        break;
      case 'load-rate': {
        running = true;
        published = 0;
        skipped = 0;
        const startMs = nowMs();
        loopRate(message.rate, startMs);
        toParent({ type: 'load-started' });
        break;
      }
      case 'stop-load':
        running = false;
        clearTimeout(timer);
        toParent({ type: 'load-stopped', lastSeq: seq - 1, published });
        break;
      case 'rss-sampling':
        clearInterval(rssTimer);
        rssSamples.length = 0;
        rssTimer = setInterval(() => rssSamples.push([nowMs(), rss()]), message.intervalMs);
        toParent({ type: 'rss-sampling' });
        break;
      case 'rss-samples':
        clearInterval(rssTimer);
        toParent({ type: 'rss-samples', samples: rssSamples.slice() });
        break;
      case 'heap-snapshot':
        gc?.();
        toParent({ type: 'heap-snapshot', path: writeHeapSnapshot(message.path) });
        break;
      case 'limits':
        toParent({ type: 'limits', limits: limits() });
        break;
      case 'fill-history': {
        const fill = target.fillHistory;
        if (fill === undefined) {
          toParent({ type: 'error', message: 'fill-history: only pushwire keeps history' });
          break;
        }
        fill(message.count).then(
          ({ since, stored }) => toParent({ type: 'history-filled', since, stored }),
          (error: unknown) => toParent({ type: 'error', message: String(error) }),
        );
        break;
      }
    }
  });
  // The orchestrator ends this process by closing the channel; exiting normally lets
  // --cpu-prof write its profile.
  process.on('disconnect', () => process.exit(0));
  toParent({ type: 'ready', port, path: target.path });
}

main().catch((error: unknown) => {
  toParent({
    type: 'error',
    message: error instanceof Error ? (error.stack ?? error.message) : String(error),
  });
  process.exit(1);
});
