/**
 * Real brokers for integration tests: a `nats-server` or `redis-server`
 * process on a free port of 127.0.0.1, which a test can kill (SIGKILL, as a
 * crash) and restart on the same port to exercise reconnection.
 *
 * A missing binary is an error whose message says how to install it: the
 * backend tests fail rather than skip, so a CI image without brokers is
 * noticed. `NATS_SERVER_BIN` / `REDIS_SERVER_BIN` point at another binary.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

/** The brokers this harness can run. */
export type BrokerKind = 'nats' | 'redis';

/** A broker process under the test's control. */
export interface Broker {
  readonly kind: BrokerKind;
  /** The port it listens on, on 127.0.0.1; kept across `kill()` and `restart()`. */
  readonly port: number;
  /** A client URL: `nats://127.0.0.1:<port>` or `redis://127.0.0.1:<port>`. */
  readonly url: string;
  /** True while the process runs. */
  readonly running: boolean;
  /** Kills the process with SIGKILL (a crash: no goodbye to clients) and waits for it to exit. */
  kill(): Promise<void>;
  /** Starts the process again on the same port (killing it first if it runs) and waits until it accepts connections. */
  restart(): Promise<void>;
  /** Stops the process (SIGTERM, then SIGKILL after a grace period) and removes its store, if any; idempotent. */
  stop(): Promise<void>;
}

/** Options of {@link startNats} and {@link startRedis}. */
export interface StartBrokerOptions {
  /** How long to wait for the broker to accept connections, in ms; default 10000. */
  startTimeout?: number;
}

/** Options of {@link startNats}. */
export interface StartNatsOptions extends StartBrokerOptions {
  /**
   * Runs JetStream (`-js -sd <dir>`); default false. The store directory is
   * made once, kept across `kill()` and `restart()` (so streams and their
   * messages survive a crash, as on a real disk) and removed by `stop()`.
   */
  jetstream?: boolean;
}

const HOST = '127.0.0.1';
const OUTPUT_KEPT = 4096;
const STOP_GRACE_MS = 5000;

interface BrokerSpec {
  kind: BrokerKind;
  binary: string;
  envVar: string;
  defaultPath: string;
  install: string;
  args(port: number): string[];
  /** Called once the process is stopped for good (`stop()`), to remove what it left on disk. */
  cleanup?(): void;
}

const SPECS: Record<BrokerKind, BrokerSpec> = {
  nats: {
    kind: 'nats',
    binary: 'nats-server',
    envVar: 'NATS_SERVER_BIN',
    defaultPath: '/usr/sbin/nats-server',
    install: 'apt-get install -y nats-server',
    args: (port) => ['-a', HOST, '-p', String(port)],
  },
  redis: {
    kind: 'redis',
    binary: 'redis-server',
    envVar: 'REDIS_SERVER_BIN',
    defaultPath: '/usr/bin/redis-server',
    install: 'apt-get install -y redis-server',
    // No persistence: a restarted broker starts empty, like a crashed pub/sub-only Redis.
    args: (port) => [
      '--save',
      '',
      '--appendonly',
      'no',
      '--port',
      String(port),
      '--bind',
      HOST,
      '--dir',
      tmpdir(),
    ],
  },
};

// Children still alive when the test process exits (a failed `after`, a crash) are killed,
// so a broken run never leaves brokers holding ports.
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/**
 * Starts `nats-server` on a free port, core NATS only unless `jetstream` is
 * set. Rejects when the binary is missing or it does not start in time.
 */
export function startNats(options: StartNatsOptions = {}): Promise<Broker> {
  if (!options.jetstream) return startBroker(SPECS.nats, options);
  const storeDir = mkdtempSync(join(tmpdir(), 'pushwire-js-'));
  const spec: BrokerSpec = {
    ...SPECS.nats,
    args: (port) => [...SPECS.nats.args(port), '-js', '-sd', storeDir],
    cleanup: () => rmSync(storeDir, { recursive: true, force: true }),
  };
  return startBroker(spec, options);
}

/** Starts `redis-server` (no persistence) on a free port. Rejects when the binary is missing or it does not start in time. */
export function startRedis(options: StartBrokerOptions = {}): Promise<Broker> {
  return startBroker(SPECS.redis, options);
}

/**
 * A TCP port of 127.0.0.1 that nothing listens on right now: the kernel
 * picks one for a listener on port 0, which is then closed. Another process
 * could take it in between; in a test run that is rare enough.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('freePort: no port'))));
    });
  });
}

/** Resolves when a TCP connection to `port` on 127.0.0.1 succeeds, or rejects after `timeout` ms. */
export async function waitForPort(port: number, timeout: number): Promise<void> {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await canConnect(port)) return;
    if (Date.now() >= deadline) {
      throw new Error(`nothing accepts connections on ${HOST}:${port} after ${timeout} ms`);
    }
    await new Promise<void>((resolve) => setTimeout(resolve, 10));
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: HOST, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/** The broker's binary: `$<envVar>`, its usual path, or the first match on PATH. */
function findBinary(spec: BrokerSpec): string {
  const fromEnv = process.env[spec.envVar];
  const candidates = fromEnv
    ? [fromEnv]
    : [
        spec.defaultPath,
        ...(process.env.PATH ?? '')
          .split(delimiter)
          .filter(Boolean)
          .map((dir) => join(dir, spec.binary)),
      ];
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not this one
    }
  }
  const where = fromEnv ? `$${spec.envVar}=${fromEnv}` : `${spec.defaultPath} or on PATH`;
  throw new Error(`${spec.binary} not found (${where}); install it with: ${spec.install}`);
}

async function startBroker(spec: BrokerSpec, options: StartBrokerOptions): Promise<Broker> {
  try {
    const binary = findBinary(spec);
    const port = await freePort();
    const broker = new BrokerProcess(spec, binary, port, options.startTimeout ?? 10_000);
    await broker.restart();
    return broker;
  } catch (error) {
    spec.cleanup?.();
    throw error;
  }
}

class BrokerProcess implements Broker {
  readonly kind: BrokerKind;
  readonly port: number;
  readonly url: string;
  readonly #spec: BrokerSpec;
  readonly #binary: string;
  readonly #startTimeout: number;
  #child: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  #output = '';

  constructor(spec: BrokerSpec, binary: string, port: number, startTimeout: number) {
    this.kind = spec.kind;
    this.port = port;
    this.url = `${spec.kind}://${HOST}:${port}`;
    this.#spec = spec;
    this.#binary = binary;
    this.#startTimeout = startTimeout;
  }

  get running(): boolean {
    return this.#child !== undefined;
  }

  async kill(): Promise<void> {
    this.#child?.kill('SIGKILL');
    await this.#exited;
  }

  async restart(): Promise<void> {
    await this.kill();
    this.#output = '';
    const child = spawn(this.#binary, this.#spec.args(this.port), {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    live.add(child);
    this.#child = child;
    const keep = (chunk: Buffer): void => {
      this.#output = (this.#output + chunk.toString()).slice(-OUTPUT_KEPT);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    let exitedEarly: (error: Error) => void = () => undefined;
    const early = new Promise<never>((_, reject) => (exitedEarly = reject));
    // A spawn failure ('error') and an exit both end the process's life; either can come first.
    this.#exited = new Promise<void>((resolve) => {
      const done = (why: string): void => {
        live.delete(child);
        if (this.#child === child) this.#child = undefined;
        exitedEarly(new Error(`${this.#spec.binary} on port ${this.port} ${why}: ${this.#output}`));
        resolve();
      };
      child.once('exit', (code, signal) => done(`exited (code ${code}, signal ${signal})`));
      child.once('error', (error) => done(`failed to start (${error.message})`));
    });
    early.catch(() => undefined); // only observed while starting
    try {
      await Promise.race([waitForPort(this.port, this.#startTimeout), early]);
    } catch (error) {
      await this.kill();
      throw error;
    }
  }

  async stop(): Promise<void> {
    const child = this.#child;
    if (child) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
      await this.#exited;
      clearTimeout(timer);
    }
    this.#spec.cleanup?.();
  }
}
