/**
 * pushwire/client/node against a server that accepts the TCP connection and
 * never answers the upgrade (what a client sees when a reconnect storm
 * overflowed the server's accept queue after the TCP handshake: the kernel
 * calls the connection open, no process holds it). The attempt must fail
 * after the client's handshake timeout (10 s) and be retried with backoff,
 * rather than wait for TCP to give up, about 15 minutes later.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { createPushClient, type PushClient } from '../../client/node.js';
import { deferred, withTimeout } from '../helpers/wait.js';

describe('client: an upgrade that is never answered', () => {
  let server: Server;
  let port: number;
  const sockets: Socket[] = [];
  let client: PushClient | undefined;

  before(async () => {
    server = createServer((socket) => {
      sockets.push(socket); // read nothing, answer nothing
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as { port: number }).port;
  });

  after(async () => {
    client?.close();
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('fails the attempt after the handshake timeout and tries again', async () => {
    const second = deferred();
    server.on('connection', () => {
      if (sockets.length >= 2) second.resolve();
    });
    const closed = deferred<{ opened: boolean; willReconnect: boolean }>();
    const started = Date.now();
    client = createPushClient(`ws://127.0.0.1:${port}/api/events`, { minDelay: 50, maxDelay: 100 });
    client.on('close', (info) => closed.resolve(info));
    const info = await withTimeout(closed.promise, 30_000, 'the unanswered attempt failed');
    const waited = Date.now() - started;
    assert.equal(info.opened, false);
    assert.equal(info.willReconnect, true);
    assert.ok(waited >= 9_000, `failed after ${waited} ms, not before the timeout`);
    await withTimeout(second.promise, 10_000, 'a second attempt after the backoff');
  });
});
