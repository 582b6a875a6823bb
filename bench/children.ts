/**
 * The benchmark's child processes: a server child per measurement and the
 * long-lived client children, each spoken to over IPC (a command, then the
 * reply it awaits). Also the run's clock for progress lines, and the cleanup
 * that kills every child on Ctrl-C so that an interrupted run leaves none
 * behind.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ClientCommand, ClientReply, ServerCommand, ServerReply } from './common.js';

/** A promise that resolves after `ms` milliseconds. */
export const sleep = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, ms));

// The run's start: this module is loaded when run.ts starts, before any measurement.
const runStarted = Date.now();
/** A progress line, stamped with the time since the run started (so slow phases show). */
export function progress(line: string): void {
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

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The server child's entry point (one process per measurement). */
export const SERVER_FILE = fileURLToPath(new URL('./server.ts', import.meta.url));
/** The client children's entry point (long-lived, for the whole run). */
export const CLIENT_FILE = fileURLToPath(new URL('./client.ts', import.meta.url));

/** A child process spoken to over IPC: send a command, await the reply of a given type. */
export class Child<Command, Reply extends { type: string }> {
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

/** A server child (bench/server.ts). */
export type ServerChild = Child<ServerCommand, ServerReply>;
/** A client child (bench/client.ts). */
export type ClientChild = Child<ClientCommand, ClientReply>;
