/**
 * What the runnable examples share: a console logger with pino's shape and
 * the demo events their heartbeats publish.
 */
import type { Logger, PushEvent } from '../../lib/index.js';

/**
 * Structured one-line JSON logs on the console. `LOG_LEVEL=debug` adds the
 * library's debug lines (one per refused and per closed session; never a credential).
 */
export function consoleLogger(): Logger {
  const line =
    (level: string, write: (text: string) => void) =>
    (obj: object, msg?: string): void =>
      write(JSON.stringify({ level, msg, ...obj }));
  return {
    debug: process.env.LOG_LEVEL === 'debug' ? line('debug', console.log) : () => undefined,
    info: line('info', console.log),
    warn: line('warn', console.warn),
    error: line('error', console.error),
  };
}

/** The n-th demo event: tasks and users, created and updated, priorities 1 to 5. */
export function demoEvent(n: number, extra: Record<string, unknown> = {}): PushEvent {
  const priority = 1 + (n % 5);
  return {
    identity: n % 3 === 0 ? 'user' : 'task',
    type: n % 4 === 0 ? 'update' : 'create',
    entity: {
      ID: String(n),
      name: `item ${n}`,
      priority,
      status: priority > 2 ? 'open' : 'done',
      ...extra,
    },
  };
}
