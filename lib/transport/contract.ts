/**
 * The session-transport interface: what the fan-out, the registry and
 * shutdown need from the connection under a session, and nothing more.
 * Two adapters exist: WebSocket (websocket.ts) and Server-Sent Events
 * (sse.ts); the dispatch code knows neither.
 *
 * Frames are built once per event and per {@link FrameFormat}, then written
 * as they are to every session whose transport writes that format: the
 * reason the format is a small integer (an index into a per-event cache)
 * rather than a method of the adapter.
 */

/**
 * The byte formats a transport writes: a WebSocket text frame of the JSON
 * event, a WebSocket binary frame of the MessagePack event, an SSE event
 * whose data is the JSON event (docs/PROTOCOL.md section 10). Indexes into
 * the frame cache of an event; a new transport adds its own.
 */
export const FrameFormat = { WebSocketJson: 0, WebSocketMsgpack: 1, SseJson: 2 } as const;
/** One of {@link FrameFormat}. */
export type FrameFormat = (typeof FrameFormat)[keyof typeof FrameFormat];
/** How many frame formats exist (the size of a per-event frame cache). */
export const FRAME_FORMATS = 3;

/** The transports a session can run over, as `stats()` and `PushSession.transportName` name them. */
export type TransportName = 'websocket' | 'sse';

/** The connection of one session, as the server writes to it. */
export interface SessionTransport {
  /** Which transport this is. */
  readonly name: TransportName;
  /** The frame format this transport writes. */
  readonly format: FrameFormat;
  /** True while frames can still be written (open, not closing). */
  readonly writable: boolean;
  /**
   * Bytes written and not yet handed to the kernel: what the slow-consumer
   * bound (`maxBufferedBytes`) is measured on.
   */
  readonly bufferedBytes: number;
  /** Writes frames built for {@link format}, end to end. */
  write(frames: Buffer): void;
  /** Holds writes until {@link uncork}, so that one turn's writes leave in one system call. */
  cork(): void;
  /** Releases corked writes. */
  uncork(): void;
  /**
   * One keepalive round: terminates the connection when the peer did not
   * answer the previous round and `judge` is true, else probes it again.
   */
  keepalive(judge: boolean): void;
  /** Starts a close with a code and reason of the protocol; idempotent. */
  close(code: number, reason: string): void;
  /**
   * Closes for a policy (a slow consumer): the close is sent, and the
   * connection destroyed soon after whether or not the peer answers, since
   * a peer that stopped reading will not.
   */
  closeForPolicy(code: number, reason: string): void;
  /** Resolves once buffered bytes drained, the connection closed, or `ms` passed. */
  drain(ms: number): Promise<void>;
  /** Closes with `code` and resolves once closed, destroying the connection after `ms`. */
  closeAndWait(code: number, reason: string, ms: number): Promise<void>;
}
