/**
 * A Server-Sent Events reader for the integration tests: Node's `fetch`
 * (undici) reading the stream of a real push endpoint, parsed as the WHATWG
 * HTML spec says (fields, `data:` lines joined with `\n`, comments), with
 * waits that end on what arrived, never on time.
 */
import { deferred, withTimeout } from './wait.js';

/** One SSE event as a reader sees it. */
export interface StreamEvent {
  /** `event:` (default `message`). */
  type: string;
  /** `id:`, if the event had one. */
  id: string | undefined;
  /** The `data:` lines, joined with `\n`. */
  data: string;
}

/** An open event stream, or the refusal that answered the request. */
export interface EventStream {
  status: number;
  headers: Headers;
  /** The body of a refusal (parsed JSON when it is JSON); undefined for a stream. */
  body: unknown;
  /** Every event so far, in order. */
  events: StreamEvent[];
  /** Comment lines seen so far (keepalives). */
  comments: number;
  /** Resolves once `n` events arrived in total (rejects after `timeout` ms). */
  waitForEvents(n: number, timeout?: number): Promise<StreamEvent[]>;
  /** Resolves once `test` holds, re-checked on every line received. */
  waitUntil(test: () => boolean, what: string, timeout?: number): Promise<void>;
  /** Resolves when the server ended the stream. */
  ended: Promise<void>;
  /** Aborts the request (the client goes away). */
  close(): void;
}

/** Options of {@link openEventStream}. */
export interface OpenOptions {
  query?: Record<string, string>;
  headers?: Record<string, string>;
  /** The push config, sent as the `config` parameter (JSON). */
  config?: unknown;
}

/** The endpoint's HTTP URL from its WebSocket URL (ws: → http:). */
export function httpUrl(wsUrl: string): string {
  return wsUrl.replace(/^ws/, 'http');
}

/**
 * Sends `GET` with `Accept: text/event-stream` and resolves once the
 * response head arrived: a stream being read, or a refusal with its body.
 */
export async function openEventStream(url: string, opts: OpenOptions = {}): Promise<EventStream> {
  const target = new URL(httpUrl(url));
  for (const [k, v] of Object.entries(opts.query ?? {})) target.searchParams.set(k, v);
  if (opts.config !== undefined) target.searchParams.set('config', JSON.stringify(opts.config));
  const abort = new AbortController();
  const response = await withTimeout(
    fetch(target, {
      headers: { accept: 'text/event-stream', ...opts.headers },
      signal: abort.signal,
    }),
    5000,
    'no response to the event-stream request',
  );
  const events: StreamEvent[] = [];
  const watchers = new Set<() => void>();
  const ended = deferred<void>();
  const stream: EventStream = {
    status: response.status,
    headers: response.headers,
    body: undefined,
    events,
    comments: 0,
    waitForEvents(n, timeout = 5000) {
      return stream
        .waitUntil(() => events.length >= n, `${n} events (got ${events.length})`, timeout)
        .then(() => events);
    },
    waitUntil(test, what, timeout = 5000) {
      if (test()) return Promise.resolve();
      const done = deferred<void>();
      const watcher = (): void => {
        if (test()) done.resolve();
      };
      watchers.add(watcher);
      return withTimeout(done.promise, timeout, `waiting for ${what}`).finally(() =>
        watchers.delete(watcher),
      );
    },
    ended: ended.promise,
    close: () => abort.abort(),
  };
  if (!response.headers.get('content-type')?.startsWith('text/event-stream')) {
    const text = await response.text();
    try {
      stream.body = JSON.parse(text);
    } catch {
      stream.body = text;
    }
    ended.resolve();
    return stream;
  }
  void readStream(response, stream, () => {
    for (const watcher of [...watchers]) watcher();
  }).then(
    () => ended.resolve(),
    () => ended.resolve(),
  );
  return stream;
}

/** Parses the body into `stream.events` as it arrives; `changed` after every line. */
async function readStream(
  response: Response,
  stream: EventStream,
  changed: () => void,
): Promise<void> {
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  let type = '';
  let id: string | undefined;
  let data: string[] = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let newline: number;
    while ((newline = buffered.search(/\r\n|\r|\n/)) !== -1) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + (buffered.startsWith('\r\n', newline) ? 2 : 1));
      if (line === '') {
        if (data.length > 0)
          stream.events.push({ type: type || 'message', id, data: data.join('\n') });
        type = '';
        id = undefined;
        data = [];
      } else if (line.startsWith(':')) {
        stream.comments++;
      } else {
        const colon = line.indexOf(':');
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'data') data.push(value);
        else if (field === 'event') type = value;
        else if (field === 'id') id = value;
      }
      changed();
    }
  }
  changed();
}

/** The push events of a stream (the default type), parsed. */
export function pushEvents(stream: EventStream): Array<Record<string, unknown>> {
  return stream.events
    .filter((e) => e.type === 'message')
    .map((e) => JSON.parse(e.data) as Record<string, unknown>);
}
