/**
 * The storm's child processes: the server child (killed and started again
 * on the same port) and the load generators, over IPC; the file-descriptor
 * limit they inherit; and the CPU accounting that says how loaded the
 * machine was. Shared with test/integration/storm.test.ts.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type {
  LoadConfig,
  LoadMessage,
  ServerMessage,
  ServerSample,
  StormServerConfig,
} from './common.js';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SERVER_FILE = fileURLToPath(new URL('./server.ts', import.meta.url));
const CLIENTS_FILE = fileURLToPath(new URL('./clients.ts', import.meta.url));

/** Every child still running, killed when this process exits however it exits. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) killGroup(child);
});

/** SIGKILLs a child and, when it leads a process group of its own (a cluster), its workers. */
function killGroup(child: ChildProcess): void {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
  } catch {
    child.kill('SIGKILL'); // not a group leader
  }
}

function forkChild(file: string, argument: unknown, detached = false): ChildProcess {
  const child = fork(file, [JSON.stringify(argument)], {
    cwd: REPO_ROOT,
    detached,
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  running.add(child);
  child.once('exit', () => running.delete(child));
  return child;
}

/**
 * The soft limit on open files of this process, from /proc/self/limits;
 * children inherit it, and a server of 20,000 sessions needs more than 20,000.
 */
export function openFileLimit(): number {
  const line = readFileSync('/proc/self/limits', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Max open files'));
  const soft = line?.split(/\s+/)[3];
  return soft === 'unlimited' ? Number.POSITIVE_INFINITY : Number(soft ?? 1024);
}

/**
 * Raises this process's open-file limit to `wanted` with prlimit(1), before
 * any child is forked (they inherit it). A hard limit below `wanted` needs
 * CAP_SYS_RESOURCE; without it this throws, saying what the limit is.
 */
export function raiseOpenFileLimit(wanted: number): void {
  if (openFileLimit() >= wanted) return;
  try {
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${wanted}:${wanted}`], {
      stdio: 'ignore',
    });
  } catch (error) {
    throw new Error(
      `the open-file limit is ${openFileLimit()} and cannot be raised to ${wanted} here (no CAP_SYS_RESOURCE): use fewer sessions per server process (--workers)`,
      { cause: error },
    );
  }
}

/** The server child: started, killed and started again on the same port. */
export class StormServer {
  #child: ChildProcess | undefined;
  #exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> = Promise.resolve({
    code: 0,
    signal: null,
  });
  /** Every sample of every incarnation, in order. */
  readonly samples: ServerSample[] = [];
  /** Exits that nobody asked for (a crash, an out-of-memory abort). */
  readonly crashes: string[] = [];
  #killing = false;

  constructor(readonly config: StormServerConfig) {}

  /** The latest sample, if any since the last start. */
  get last(): ServerSample | undefined {
    return this.#lastOfThisRun;
  }
  #lastOfThisRun: ServerSample | undefined;

  /** The running child's pid. */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Forks the server; resolves once it listens, rejects when it exits or fails first. */
  async start(timeoutMs = 60_000): Promise<void> {
    // Its own process group, so that a SIGKILL takes its cluster workers down at the same instant.
    const child = forkChild(SERVER_FILE, this.config, true);
    this.#child = child;
    this.#lastOfThisRun = undefined;
    this.#killing = false;
    this.#exit = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        if (!this.#killing) this.crashes.push(`server exited: code ${code}, signal ${signal}`);
        if (this.#child === child) this.#child = undefined;
        resolve({ code, signal });
      }),
    );
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`server did not listen within ${timeoutMs} ms`)),
        timeoutMs,
      );
      child.on('message', (message: ServerMessage) => {
        if (message.type === 'sample') {
          this.samples.push(message.sample);
          this.#lastOfThisRun = message.sample;
        } else if (message.type === 'listening') {
          clearTimeout(timer);
          resolve();
        } else if (message.type === 'fatal') {
          clearTimeout(timer);
          reject(new Error(`server: ${message.message}`));
        }
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`server exited before listening: code ${code}, signal ${signal}`));
      });
    });
  }

  /** SIGKILLs the server and its workers (a crash: no close frames) and waits for its exit. */
  async kill(): Promise<void> {
    this.#killing = true;
    if (this.#child) killGroup(this.#child);
    await this.#exit;
  }

  /** SIGTERMs the server (push.close()) and waits for its exit. */
  async stop(): Promise<void> {
    this.#killing = true;
    this.#child?.kill('SIGTERM');
    await this.#exit;
  }
}

/** A load generator child, its latest report and its answers. */
export class LoadGenerator {
  readonly child: ChildProcess;
  latest: Extract<LoadMessage, { type: 'report' }>['report'] | undefined;
  readonly #waiters = new Map<string, (message: LoadMessage) => void>();
  fatal: string | undefined;

  constructor(readonly config: LoadConfig) {
    this.child = forkChild(CLIENTS_FILE, config);
    this.child.on('message', (message: LoadMessage) => {
      if (message.type === 'report') this.latest = message.report;
      else if (message.type === 'fatal') this.fatal = message.message;
      this.#waiters.get(message.type)?.(message);
    });
    this.child.once('exit', (code, signal) => {
      this.fatal ??= `load generator exited: code ${code}, signal ${signal}`;
    });
  }

  /** Sends a command and resolves with the reply of type `reply`. */
  ask<T extends LoadMessage['type']>(
    command: Parameters<NonNullable<ChildProcess['send']>>[0],
    reply: T,
    timeoutMs = 30_000,
  ): Promise<Extract<LoadMessage, { type: T }>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no ${reply} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.#waiters.set(reply, (message) => {
        clearTimeout(timer);
        this.#waiters.delete(reply);
        resolve(message as Extract<LoadMessage, { type: T }>);
      });
      this.child.send(command);
    });
  }

  /** Sends a command that has no reply. */
  tell(command: Parameters<NonNullable<ChildProcess['send']>>[0]): void {
    this.child.send(command);
  }
}

/** CPU time of a process (user + system), in ms, from /proc/<pid>/stat; 0 once it is gone. */
export function processCpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command (which may hold spaces), from field 3: utime is 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10; // clock ticks of 10 ms (USER_HZ 100)
  } catch {
    return 0;
  }
}

/** The pids of a process's children (/proc/<pid>/task/<pid>/children). */
export function childrenOf(pid: number | undefined): number[] {
  if (pid === undefined) return [];
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/** The machine's busy and total CPU time so far, in ms, from /proc/stat. */
export function machineCpuMs(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const values = line.trim().split(/\s+/).slice(1).map(Number);
  const total = values.reduce((a, b) => a + b, 0) * 10;
  const idle = ((values[3] ?? 0) + (values[4] ?? 0)) * 10; // idle + iowait
  return { busy: total - idle, total };
}
