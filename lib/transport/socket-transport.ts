/**
 * What both transports share: a session whose frames are written straight
 * to its TCP socket (prebuilt WebSocket frames, or SSE events), so the
 * buffered bytes the slow-consumer bound reads, the writes, corking and a
 * shutdown's drain are the socket's own.
 */
import type { Socket } from 'node:net';
import type { FrameFormat, SessionTransport, TransportName } from './contract.js';

/** The socket half of a {@link SessionTransport}; each adapter adds keepalive and closing. */
export abstract class SocketTransport implements SessionTransport {
  abstract readonly name: TransportName;
  abstract readonly format: FrameFormat;
  abstract readonly writable: boolean;

  constructor(
    /** The socket frames are written to. */
    readonly socket: Socket,
  ) {}

  get bufferedBytes(): number {
    return this.socket.writableLength;
  }

  write(frames: Buffer): void {
    this.socket.write(frames);
  }

  cork(): void {
    this.socket.cork();
  }

  uncork(): void {
    this.socket.uncork();
  }

  drain(ms: number): Promise<void> {
    const socket = this.socket;
    if (socket.writableLength === 0 || !socket.writable) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        socket.off('drain', done);
        socket.off('close', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      socket.once('drain', done);
      socket.once('close', done);
    });
  }

  abstract keepalive(judge: boolean): void;
  abstract close(code: number, reason: string): void;
  abstract closeForPolicy(code: number, reason: string): void;
  abstract closeAndWait(code: number, reason: string, ms: number): Promise<void>;
}
