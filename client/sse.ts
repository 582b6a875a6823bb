/**
 * The Server-Sent Events transport of the client (PROTOCOL.md section 10):
 * one `fetch` whose body is read as an event stream, dressed as a
 * {@link WebSocketLike} so that the client's state, reconnects, resume and
 * listeners are the same code whatever the transport. `fetch` rather than
 * `EventSource`: it sends request headers (the `headers` option), and it
 * sees a refusal's status and JSON body, so a 401 over SSE is the same
 * `refused` as over a WebSocket; and the client keeps its own backoff
 * instead of EventSource's fixed retry.
 */
import type { WebSocketLike } from './client.js';

/** The handlers the client sets on a socket; the stream calls them as a WebSocket would. */
interface Handlers {
  onopen(): void;
  onmessage(message: { data: string }): void;
  onclose(close: { code: number; reason: string }): void;
}

/**
 * Splits decoded text into SSE lines and dispatches events, as the WHATWG
 * "server-sent events" parser does: lines end with CRLF, LF or CR (a CR
 * at the end of one chunk and an LF at the start of the next are one line
 * end); `data` lines are joined with `\n`; a blank line dispatches; lines
 * starting with `:` are comments (the server's keepalive). `id` and `retry`
 * are not kept: every event's data carries its own `position`, which the
 * client resumes from, and the client has its own backoff. An event with no
 * data is not dispatched, as the standard says.
 */
export function sseParser(dispatch: (type: string, data: string) => void): (text: string) => void {
  let rest = '';
  let afterCR = false;
  let type = '';
  let data: string | undefined;
  return (text) => {
    if (afterCR && text.startsWith('\n')) text = text.slice(1);
    afterCR = text.endsWith('\r');
    const lines = (rest + text).split(/\r\n|\r|\n/);
    rest = lines.pop() as string;
    for (const line of lines) {
      if (line === '') {
        if (data !== undefined) dispatch(type || 'message', data);
        type = '';
        data = undefined;
        continue;
      }
      const colon = line.indexOf(':');
      if (colon === 0) continue;
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') data = data === undefined ? value : `${data}\n${value}`;
      else if (field === 'event') type = value;
    }
  };
}

/**
 * Opens an event stream at `url` (http: or https:) and returns it as a
 * WebSocket-like object: `onopen` when a 200 `text/event-stream` answers,
 * `onmessage` with the JSON text of each event, error event and recovery
 * frame (the client decodes them as it decodes WebSocket messages), and
 * `onclose` once, with the code of the server's `event: close` (1001,
 * 1008…), 1006 when the stream failed or ended without one, or the code
 * given to close(). A refusal (a status other than 200) is handed to
 * `refused` with its body's text before `onclose`. `send` does nothing:
 * an SSE session's config is in its URL.
 */
export function openEventStream(
  url: string,
  headers: Record<string, string> | undefined,
  refused: (status: number, body: string) => void,
): WebSocketLike {
  const abort = new AbortController();
  let code = 1006;
  let reason = '';
  // The client sets every handler before anything can fire (fetch answers in a later task), and
  // reads neither readyState nor binaryType: only what it calls is here.
  const socket = {
    send() {},
    close(closeCode = 1000) {
      if (abort.signal.aborted) return;
      code = closeCode;
      abort.abort();
    },
  } as unknown as WebSocketLike;
  const handlers = socket as unknown as Handlers;
  const parse = sseParser((type, data) => {
    // After close() or the server's close, what is still buffered is not delivered.
    if (abort.signal.aborted) return;
    if (type !== 'close') return handlers.onmessage({ data });
    try {
      const close = JSON.parse(data) as { code?: unknown; reason?: string };
      if (typeof close.code === 'number')
        ({ code, reason = '' } = close as { code: number; reason?: string });
    } catch {
      // A close frame that does not parse, or has no code, still closes the stream (1006).
    }
    abort.abort();
  });
  const read = async (): Promise<void> => {
    const response = await fetch(url, {
      headers: { Accept: 'text/event-stream', ...headers },
      signal: abort.signal,
      cache: 'no-store',
      // Credentials stay fetch's default, same-origin (EventSource's too): 'include' would make
      // every stream to another origin fail under a CORS policy of `*`, a silent reconnect loop,
      // where without cookies a server that needs them answers a 401 the client reports.
    });
    if (response.status !== 200) return refused(response.status, await response.text());
    // A 200 that is not a stream (a page a proxy or a catch-all route served) is a failure.
    if (!/^text\/event-stream/i.test(response.headers.get('content-type') ?? '')) return;
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    handlers.onopen();
    // Checked before each read, not left to the abort: undici does not always fail a read that
    // starts after the abort (a body relayed by a proxy, seen in test/integration/sse-client).
    while (!abort.signal.aborted) {
      const { done, value } = await reader.read();
      if (done) return;
      parse(decoder.decode(value, { stream: true }));
    }
  };
  void read()
    .catch(() => undefined) // aborted, or the network failed: the close below says so
    .finally(() => {
      abort.abort();
      handlers.onclose({ code, reason });
    });
  return socket;
}
