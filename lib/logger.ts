/** The logger option: any object with pino's four methods. */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

const noop = (): void => undefined;

/** The default logger: silent, as a library should be. */
export const silentLogger: Logger = { debug: noop, info: noop, warn: noop, error: noop };

/** A plain description of an error for a log line (never its stack for a client). */
export function describeError(error: unknown): { message: string; name?: string; code?: string } {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return {
      message: error.message,
      name: error.name,
      ...(typeof code === 'string' ? { code } : {}),
    };
  }
  return { message: String(error) };
}
