/**
 * The sessions of the raw `ws` loop: the practical limit pushwire is
 * measured against, by the benchmark's raw mode (bench/server.ts) and by the
 * idle-memory test (test/integration/idle-memory.test.ts). One code for
 * both, so that the test's baseline is the loop the benchmark reports.
 */
import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import { WebSocketServer } from 'ws';

/**
 * Accepts every WebSocket upgrade on `server` and returns the set of their
 * sockets, each removed once it closes. Nothing else is kept per session:
 * no per-message deflate, no client tracking, and listeners shared by every
 * session, none made per session, so that its memory per session is the
 * least a `ws` server can pay (the scale phase and the idle-memory test
 * compare pushwire with it).
 */
export function acceptRawSessions(server: Server): Set<Socket> {
  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    clientTracking: false,
  });
  const sockets = new Set<Socket>();
  const ignore = (): void => undefined;
  function forget(this: Socket): void {
    sockets.delete(this);
  }
  server.on('upgrade', (req, socket, head) => {
    wss.handleUpgrade(req, socket, head, (ws) => {
      const s = socket as Socket;
      sockets.add(s);
      ws.on('error', ignore);
      s.on('close', forget);
    });
  });
  return sockets;
}
