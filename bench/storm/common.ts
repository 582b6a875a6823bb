/**
 * What the storm benchmark's processes say to each other over IPC: the
 * server child's configuration and its samples, and the load generators'
 * commands and reports. Shared with test/integration/storm.test.ts, which
 * runs the same server child.
 */

/** The backends the storm runs on: history needs one that outlives the server process. */
export type StormBackend = 'nats' | 'jetstream' | 'redis' | 'redis-streams';

/** True when the backend keeps history, so that clients resume with `since`. */
export function hasHistory(backend: StormBackend): boolean {
  return backend === 'jetstream' || backend === 'redis-streams';
}

/** The server child's configuration, passed as one JSON argument. */
export interface StormServerConfig {
  /** The port to listen on (127.0.0.1), the same across restarts. */
  port: number;
  backend: StormBackend;
  /** The broker's URL (`nats://…` or `redis://…`). */
  url: string;
  topic: string;
  /** The history bound in events (history backends only). */
  maxEvents: number;
  /** connectionRateLimitPlugin's options, or absent for none. */
  rateLimit?: { maxAttempts: number; intervalMs: number };
  /** How often the server samples itself, in ms. */
  sampleMs: number;
  /** listen(2)'s backlog; default 4096, this machine's net.core.somaxconn (Node's own: 511). */
  backlog?: number;
  /** node:cluster workers sharing the port; default 1 (no cluster). */
  workers?: number;
  /**
   * How the workers share connections: `rr`, the primary accepts and hands each to a worker in
   * turn (Node's default on Linux), or `none`, every worker accepts from the shared socket.
   */
  scheduling?: 'rr' | 'none';
}

/** One sample of the server child, taken every `sampleMs`. */
export interface ServerSample {
  /** Date.now() in the server child: one clock for every process of the machine. */
  t: number;
  /** Open sessions. */
  sessions: number;
  /** Open sessions whose push config has been received and applied. */
  configured: number;
  /** Handshakes completed since the process started. */
  accepted: number;
  /** Attempts refused with 429 (the rate limit) since the process started. */
  refused429: number;
  /** Attempts refused with any status since the process started. */
  refused: number;
  /** Sessions that resumed from a position, and of those, answered recovered: false. */
  recoveries: number;
  recoveriesFailed: number;
  /** The longest event-loop delay seen since the previous sample, in ms. */
  loopDelayMax: number;
  rss: number;
  heapUsed: number;
  /** The backend's connection state. */
  backend: string;
}

/** Server child → parent. */
export type ServerMessage =
  | { type: 'listening'; pid: number; port: number }
  | { type: 'sample'; sample: ServerSample }
  | { type: 'fatal'; message: string };

/** The load generator's configuration, passed as one JSON argument. */
export interface LoadConfig {
  /** The push endpoint, `ws://127.0.0.1:<port>/api/events`. */
  url: string;
  /** How many clients this process runs. */
  clients: number;
  /** The index of its first client, so that addresses differ across load generators. */
  firstIndex: number;
  /** Clients sharing one source address (127.0.x.y), as behind one NAT. */
  clientsPerAddress: number;
  /** Clients started per second at the first connection. */
  rampPerSecond: number;
  /** The client's backoff bounds. */
  minDelay: number;
  maxDelay: number;
  /** How often it reports, in ms. */
  reportMs: number;
}

/** Parent → load generator. */
export type LoadCommand =
  /** Forget the counters of what happened since the last mark: a new phase starts. */
  | { type: 'mark' }
  /** Send the per-client verification against the last event sequence published. */
  | { type: 'verify'; lastSeq: number }
  | { type: 'close' };

/** A load generator's periodic report; "since mark" counts reset on every mark. */
export interface LoadReport {
  t: number;
  /** Clients created so far (the first connections are ramped). */
  started: number;
  /** Clients whose socket is open now, and those opening one (not waiting to retry). */
  open: number;
  connecting: number;
  /** Clients that opened at least once since the mark. */
  reopened: number;
  /** Clients whose last recovery frame since the mark said recovered: true / false. */
  recovered: number;
  recoveredFalse: number;
  /** Clients whose last event sequence is at least `minSeq`: the smallest last sequence. */
  minSeq: number;
  /** Refusals the clients saw (status → count) since the mark. */
  refusals: Record<string, number>;
  /** Reconnect attempts scheduled since the mark. */
  retries: number;
}

/**
 * What clients saw in their streams of events: counted per client by a load generator, summed
 * over its clients for the verification, and over the load generators by bench/storm.ts.
 */
export interface StreamCounts {
  /** Sequences missing (after each client's first). */
  missing: number;
  /** Sequences received twice or out of order. */
  duplicates: number;
  /** Events of an identity the push config excludes after the first mark: a resumed session that ran without its config. */
  excluded: number;
  /** The same on first connections, before the first mark: allowed (no `since` holds them). */
  excludedFirst: number;
  /** Recovery frames received, and of them recovered: false, over the whole run. */
  recoveries: number;
  recoveriesFalse: number;
}

/** Every count at zero. */
export function noCounts(): StreamCounts {
  return {
    missing: 0,
    duplicates: 0,
    excluded: 0,
    excludedFirst: 0,
    recoveries: 0,
    recoveriesFalse: 0,
  };
}

/** Adds `part`'s counts to `total`'s. */
export function addCounts(total: StreamCounts, part: StreamCounts): void {
  for (const key of Object.keys(noCounts()) as Array<keyof StreamCounts>) total[key] += part[key];
}

/** A load generator's verification of every client's stream of events. */
export interface LoadVerification extends StreamCounts {
  clients: number;
  /** Clients that received every sequence up to `lastSeq`. */
  complete: number;
  /** An example of a client that is incomplete, for the log. */
  example?: string;
}

/** Adds one load generator's verification to the total of all. */
export function addVerification(total: LoadVerification, part: LoadVerification): void {
  total.clients += part.clients;
  total.complete += part.complete;
  addCounts(total, part);
  total.example ??= part.example;
}

/** Load generator → parent. */
export type LoadMessage =
  | { type: 'report'; report: LoadReport }
  | { type: 'verification'; verification: LoadVerification }
  | { type: 'closed' }
  | { type: 'fatal'; message: string };

/** A child's configuration: the one JSON argument it was forked with. */
export function childConfig<T>(): T {
  return JSON.parse(process.argv[2] ?? '{}') as T;
}

/** A child's message to its parent over IPC (the benchmark, or a cluster primary). */
export function tellParent(message: ServerMessage | LoadMessage): void {
  process.send?.(message);
}

/** The identity and type of the events the clients ask for. */
export const STORM_IDENTITY = 'storm';
/** The identity their push config excludes: receiving one means the config was not applied. */
export const EXCLUDED_IDENTITY = 'noise';
/** The push config every client sends. */
export const STORM_CONFIG = { identities: { [STORM_IDENTITY]: ['tick'] } };
