/**
 * A custom auth plugin in five lines: `authPlugin(fn)` checks the `token`
 * query parameter against a map of users and sets the session's claims;
 * `initPlugin(fn)` then decides what an authenticated user may open.
 *
 *   npx tsx examples/custom-auth/server.ts
 *   # ws://localhost:3000/api/events?token=alice-secret  (accepted)
 *   # ws://localhost:3000/api/events?token=nope          (401, no WebSocket)
 */
import express from 'express';
import expressWs from 'express-ws';
import { authPlugin, initPlugin, LocalPubSub, pushMiddleware } from '../../lib/index.js';

// In a real service: a session store, a database, an identity provider.
const users = new Map([
  ['alice-secret', { name: 'alice', namespace: '/acme', role: 'admin' }],
  ['bob-secret', { name: 'bob', namespace: '/acme/sales', role: 'viewer' }],
]);

// The five lines: unknown token → 'ko' (401 before the handshake); known → claims, 'ok'.
const auth = authPlugin((session) => {
  const user = users.get(session.token);
  if (user === undefined) return 'ko';
  session.setClaims([`sub=${user.name}`, `namespace=${user.namespace}`, `role=${user.role}`]);
  return 'ok';
});

// Authorization after authentication: only admins may ask for the audit stream (else 403).
const init = initPlugin(
  (session) => session.parameter('stream') !== 'audit' || session.claimsMap.role === 'admin',
);

const app = express();
const ews = expressWs(app);
const push = pushMiddleware(new LocalPubSub(), 'events', [auth, init]);
app.use('/api', push); // ws://host/api/events
push.attach(ews);

await push.ready;
const port = Number(process.env.PORT ?? 3000);
const server = app.listen(port, () => {
  console.log(`custom-auth example on ws://localhost:${port}/api/events?token=alice-secret`);
});

// Something to receive once connected.
const ticker = setInterval(() => {
  push
    .publish({ identity: 'task', type: 'create', entity: { ID: String(Date.now()), name: 'tick' } })
    .catch((error: unknown) => console.error('publish failed', error));
}, 2000);

async function shutdown(): Promise<void> {
  clearInterval(ticker);
  await push.close();
  server.close(() => process.exit(0));
}
process.once('SIGTERM', () => void shutdown());
process.once('SIGINT', () => void shutdown());
