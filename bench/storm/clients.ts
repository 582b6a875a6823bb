/**
 * A load generator of the storm: `clients` sessions of `pushwire/client/node`,
 * with its reconnect (backoff with full jitter) and resume (`since`) as an
 * application gets them, forked with IPC by bench/storm.ts:
 *
 *   node --import tsx bench/storm/clients.ts '<LoadConfig as JSON>'
 *
 * Each group of `clientsPerAddress` clients connects from its own source
 * address of 127.0.0.0/8 (127.0.x.y), as clients behind one NAT would: the
 * rate limit counts per address, and 20,000 connections from one address
 * would also compete for its ephemeral ports during the storm.
 */
import WebSocket from 'ws';
import { createPushClient, PushRefusedError, type PushClient } from '../../client/node.js';
import {
  EXCLUDED_IDENTITY,
  STORM_CONFIG,
  addCounts,
  childConfig,
  noCounts,
  tellParent,
  type LoadCommand,
  type LoadConfig,
  type LoadVerification,
  type StreamCounts,
} from './common.js';

const config = childConfig<LoadConfig>();

/** The source address of client `index`: 127.0.x.y with y in 1..250, x from 1. */
export function sourceAddress(index: number, clientsPerAddress: number): string {
  const group = Math.floor(index / clientsPerAddress);
  return `127.0.${1 + Math.floor(group / 250)}.${1 + (group % 250)}`;
}

/** A `ws` class that binds its sockets to one local address (the client accepts ws subclasses). */
function boundWebSocket(localAddress: string): typeof WebSocket {
  class BoundWebSocket extends WebSocket {
    // The client opens sockets as `new WebSocket(url, options)` (client/node.ts).
    constructor(address: string | URL, options?: WebSocket.ClientOptions) {
      super(address, { ...options, localAddress });
    }
  }
  return BoundWebSocket as unknown as typeof WebSocket;
}

/** What one client saw, kept small: 20,000 of them live in two processes. */
interface Tracked extends StreamCounts {
  client: PushClient;
  lastSeq: number;
  /** Since the last mark: opened again, and the last recovery frame's verdict. */
  reopened: boolean;
  recovery: boolean | undefined;
}

const tracked: Tracked[] = [];
const classes = new Map<string, typeof WebSocket>();
let refusals: Record<string, number> = {};
/** Set by the first mark: excluded events before it came from first connections (below). */
let marked = false;
let retries = 0;

function start(index: number): void {
  const address = sourceAddress(index, config.clientsPerAddress);
  let WebSocketClass = classes.get(address);
  if (WebSocketClass === undefined) {
    WebSocketClass = boundWebSocket(address);
    classes.set(address, WebSocketClass);
  }
  const client = createPushClient(config.url, {
    WebSocket: WebSocketClass,
    minDelay: config.minDelay,
    maxDelay: config.maxDelay,
  });
  const t: Tracked = {
    client,
    lastSeq: -1,
    ...noCounts(),
    reopened: false,
    recovery: undefined,
  };
  tracked.push(t);
  client.setConfig(STORM_CONFIG);
  client.on('open', () => {
    t.reopened = true;
  });
  client.on('event', (event) => {
    if (event.identity === EXCLUDED_IDENTITY) {
      // A first connection has no `since`, so its live events start before its push config
      // arrives (the protocol allows it); a resumed one waits for the config. Only those count.
      if (marked) t.excluded++;
      else t.excludedFirst++;
      return;
    }
    const seq = (event.entity as { seq: number }).seq;
    if (t.lastSeq < 0) t.lastSeq = seq;
    else if (seq <= t.lastSeq) t.duplicates++;
    else {
      t.missing += seq - t.lastSeq - 1;
      t.lastSeq = seq;
    }
  });
  client.on('recovery', ({ recovered }) => {
    t.recoveries++;
    if (!recovered) t.recoveriesFalse++;
    t.recovery = recovered;
  });
  client.on('reconnecting', () => {
    retries++;
  });
  client.on('error', (error) => {
    if (error instanceof PushRefusedError) {
      const key = String(error.status);
      refusals[key] = (refusals[key] ?? 0) + 1;
    }
  });
}

// The first connections are ramped, so that the storm measured is the reconnection's, not this.
// Paced by the clock, not by ticks: a starved process's timers fire late and coalesce, and
// counting ticks then slows the ramp to a crawl.
let started = 0;
const rampStart = Date.now();
const ramp = setInterval(() => {
  const due = Math.min(
    config.clients,
    Math.ceil(((Date.now() - rampStart) * config.rampPerSecond) / 1000),
  );
  while (started < due) {
    start(config.firstIndex + started);
    started++;
  }
  if (started >= config.clients) clearInterval(ramp);
}, 10);

setInterval(() => {
  let open = 0;
  let connecting = 0;
  let reopened = 0;
  let recovered = 0;
  let recoveredFalse = 0;
  let minSeq = started < config.clients ? -1 : Number.POSITIVE_INFINITY;
  for (const t of tracked) {
    if (t.client.state === 'open') open++;
    else if (t.client.state === 'connecting') connecting++;
    if (t.reopened) reopened++;
    if (t.recovery === true) recovered++;
    if (t.recovery === false) recoveredFalse++;
    if (t.lastSeq < minSeq) minSeq = t.lastSeq;
  }
  tellParent({
    type: 'report',
    report: {
      t: Date.now(),
      started,
      open,
      connecting,
      reopened,
      recovered,
      recoveredFalse,
      minSeq: Number.isFinite(minSeq) ? minSeq : -1,
      refusals,
      retries,
    },
  });
}, config.reportMs);

function verify(lastSeq: number): LoadVerification {
  const v: LoadVerification = { clients: tracked.length, complete: 0, ...noCounts() };
  for (const [i, t] of tracked.entries()) {
    const complete = t.lastSeq === lastSeq && t.missing === 0;
    if (complete) v.complete++;
    else
      v.example ??= `client ${config.firstIndex + i}: last ${t.lastSeq} of ${lastSeq}, ${t.missing} missing, state ${t.client.state}`;
    addCounts(v, t);
    // And those after its last one: a client that stopped short.
    v.missing += Math.max(0, lastSeq - t.lastSeq);
  }
  return v;
}

process.on('message', (command: LoadCommand) => {
  switch (command.type) {
    case 'mark':
      marked = true;
      for (const t of tracked) {
        t.reopened = false;
        t.recovery = undefined;
      }
      refusals = {};
      retries = 0;
      break;
    case 'verify':
      tellParent({ type: 'verification', verification: verify(command.lastSeq) });
      break;
    case 'close':
      for (const t of tracked) t.client.close();
      tellParent({ type: 'closed' });
      setImmediate(() => process.exit(0));
      break;
  }
});
process.on('disconnect', () => process.exit(0));
process.on('uncaughtException', (error) => {
  tellParent({ type: 'fatal', message: String(error) });
  process.exit(1);
});
