/**
 * pushMiddleware: the Express side. A request handler (mountable like a
 * router, at any prefix, on Express 4 and 5) serving the push endpoint,
 * and `attach(ews)`, which routes upgrades to that endpoint through the
 * Express app and the plugin chain before any handshake.
 *
 * How the upgrade works: express-ws's WebSocket server receives every
 * upgrade of the HTTP server. `attach` wraps that server's `handleUpgrade`.
 * For each upgrade it decides, from the path alone, by walking the app's
 * router stack to this handler (no middleware runs), whether the URL is
 * this endpoint. If not, express-ws gets the upgrade unchanged. If so, the
 * Express app runs once on the request with a real HTTP response bound to
 * the socket, so middleware mounted before the endpoint (cookies, sessions,
 * rate limits) runs and may answer with its own status; the endpoint's
 * handler then runs the session phase and either writes the refusal as an
 * HTTP response or completes the WebSocket handshake itself.
 */
import { ServerResponse, type IncomingMessage, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { WebSocketServer } from 'ws';
import type { PublishOptions } from './chain.js';
import { PushError } from './errors.js';
import { malformedHandshake, refuseOnSocket } from './handshake.js';
import { describeError, silentLogger } from './logger.js';
import { resolveOptions, type PushOptions } from './options.js';
import type { PushEvent } from './protocol/event.js';
import type { PubSubClient } from './pubsub/contract.js';
import { PushServer, type DispatchInfo, type PushStats } from './server.js';
import type { PushSession } from './session.js';
import type { Plugin } from './chain.js';

/** The part of express-ws's instance that `attach` uses. */
export interface ExpressWsInstance {
  /** The Express application express-ws was applied to. */
  app: unknown;
  /** express-ws's WebSocket server (it listens to every upgrade of the HTTP server). */
  getWss(): { handleUpgrade: (...args: never[]) => void };
}

type NextFunction = (error?: unknown) => void;

/** The push middleware: an Express request handler carrying the push API. */
export interface PushMiddleware {
  /** Serves the endpoint; any other request goes to `next()`. */
  (req: IncomingMessage, res: ServerResponse, next: NextFunction): void;
  /**
   * Routes upgrades to this endpoint through the Express app and the plugin
   * chain before the handshake. Call it once, before `listen`. Returns this.
   */
  attach(ews: ExpressWsInstance): PushMiddleware;
  /** Publishes events to the topic. Rejects with InvalidEventError or a PubSubError (after retries). */
  publish(...events: PushEvent[]): Promise<void>;
  /** Publishes with options visible to publish plugins (the caller's span, a tracking name). */
  publishWith(options: PublishOptions, ...events: PushEvent[]): Promise<void>;
  /** The open sessions. */
  sessions(): PushSession[];
  /** Counters since start. */
  stats(): PushStats;
  /**
   * Calls `listener` after each event's fan-out with its counts and
   * duration (for metrics; nothing is measured while no listener is set).
   * A throw is logged and ignored. Returns a function that removes it.
   */
  onDispatch(listener: (info: DispatchInfo) => void): () => void;
  /** The pub/sub backend it was created with (metrics read its `status`). */
  readonly pubsub: PubSubClient;
  /** Resolves once subscribed to the topic; rejects with the backend's error. */
  readonly ready: Promise<void>;
  /** Closes every session with 1001 after a bounded flush, unsubscribes; idempotent. */
  close(): Promise<void>;
  /** The endpoint path under the mount point. */
  readonly endpoint: string;
}

/** Marks a request whose upgrade this middleware owns, with what the handshake needs. */
const kUpgrade = Symbol('pushwire.upgrade');
const EMPTY = Buffer.alloc(0);
/** Two properties added then deleted: the first deletion is what moves an object to dictionary mode. */
const kShape = Symbol('pushwire.shape');
const kShapeEnd = Symbol('pushwire.shape-end');

/**
 * Moves an object's properties from a hidden class to a dictionary (V8's dictionary mode),
 * leaving no property behind.
 *
 * Why, for the request and response of an upgrade: Express swaps their prototypes
 * (`app.handle`), then it, the router and the middleware add properties to them (`res.locals`,
 * `req.next`, `baseUrl`, `originalUrl`, `params`, `_parsedUrl`, a cookie parser's `cookies`…).
 * V8 shares no hidden class between objects whose prototype was swapped: each property added
 * afterwards gives the object a Map of its own and a copy of all its property descriptors (~30
 * for a request, ~45 for a response), allocated in old space, which only a full GC frees. That
 * was ~7 KiB of old-space garbage per handshake, and after a burst of 5,000 handshakes the heap
 * grown for it held ~3 KiB of RSS per session (issue 7). In dictionary mode the same properties
 * go to a hash table that dies young with the object. Both live for one handshake, so the slower
 * property lookups of a dictionary do not matter.
 */
function toDictionaryMode(object: object): void {
  const o = object as Record<symbol, unknown>;
  o[kShape] = undefined;
  o[kShapeEnd] = undefined;
  // Deleting the last property added only steps the hidden class back; deleting an earlier one
  // normalizes the object. The second deletion then only removes a dictionary entry.
  delete o[kShape];
  delete o[kShapeEnd];
}

interface PendingUpgrade {
  server: PushServer;
  socket: Duplex;
  head: Buffer;
  wss: WebSocketServer;
  /** Set once a response or the handshake happened (or the attempt timed out). */
  settled: boolean;
  timer: NodeJS.Timeout | undefined;
  /** Removes the handshake's socket listeners once the session owns the socket. */
  release: () => void;
}

type UpgradeRequest = IncomingMessage & {
  [kUpgrade]?: PendingUpgrade;
  ws?: unknown;
  wsHandled?: boolean;
};

interface LayerLike {
  handle?: unknown;
  route?: unknown;
  path?: unknown;
  match?: (path: string) => unknown;
}

function pathnameOf(url: string | undefined): string {
  const raw = url ?? '/';
  const q = raw.indexOf('?');
  return q === -1 ? raw : raw.slice(0, q);
}

/** The router stack of an Express 4 or 5 application, or a router; undefined if it has none. */
function stackOf(handler: unknown): LayerLike[] | undefined {
  if (handler === null || (typeof handler !== 'function' && typeof handler !== 'object'))
    return undefined;
  const h = handler as { stack?: unknown; _router?: { stack?: unknown }; router?: unknown };
  if (Array.isArray(h.stack)) return h.stack as LayerLike[];
  // Express 4 keeps the app's router in `_router` (reading `app.router` there throws).
  if ('_router' in h)
    return Array.isArray(h._router?.stack) ? (h._router.stack as LayerLike[]) : undefined;
  const descriptor = Object.getOwnPropertyDescriptor(h, 'router');
  if (descriptor?.get || descriptor?.value) {
    let router: { stack?: unknown } | undefined;
    try {
      router = h.router as { stack?: unknown } | undefined;
    } catch {
      // An Express 4 app with no route yet (no `_router`), mounted on a router, which does not
      // wrap it: its `router` getter throws, and a throw here would be an uncaught exception
      // in the HTTP server's 'upgrade' listener. It has no stack to walk.
      return undefined;
    }
    if (Array.isArray(router?.stack)) return router.stack as LayerLike[];
  }
  return undefined;
}

/**
 * The part of `path` a layer matched: Express 4 and router < 2.3 return a
 * boolean and set `layer.path`; router 2.3 returns `{ path }`.
 */
function matchedPrefix(layer: LayerLike, path: string): string | undefined {
  if (typeof layer.match !== 'function') return undefined;
  let result: unknown;
  try {
    result = layer.match(path);
  } catch {
    return undefined;
  }
  if (!result) return undefined;
  if (typeof result === 'object' && typeof (result as { path?: unknown }).path === 'string') {
    return (result as { path: string }).path;
  }
  return typeof layer.path === 'string' ? layer.path : undefined;
}

function writeRefusal(res: ServerResponse, error: PushError): void {
  if (res.headersSent) return;
  const body = JSON.stringify([error.toErrorObject()]);
  res.statusCode = error.status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.setHeader('Connection', 'close');
  res.end(body);
}

/** Where an upgrade goes, from the path alone (see {@link survey}). */
interface UpgradeRoute {
  /** The path reaches this middleware's endpoint. */
  endpoint: boolean;
  /** The path is under this middleware's mount point (this is where it was mounted). */
  mount: string | undefined;
  /** Another handler could take the upgrade: an express-ws route, or a sub-app we cannot see into. */
  other: boolean;
}

/** The URL express-ws gives its routes for an upgrade of `path` (its `websocketUrl`). */
function expressWsPath(path: string): string {
  return `${path.endsWith('/') ? path : path + '/'}.websocket`;
}

/** True when a route layer takes a GET of `path` (express-ws routes are GET routes). */
function routeTakes(layer: LayerLike, path: string): boolean {
  const methods = (layer.route as { methods?: Record<string, unknown> } | undefined)?.methods;
  if (methods === undefined || !(methods.get === true || methods._all === true)) return false;
  if (typeof layer.match !== 'function') return false;
  try {
    return Boolean(layer.match(path));
  } catch {
    return false;
  }
}

/**
 * Walks `stack` for `pathname` down to `target` through mounted routers (no middleware runs), and notes whether the path is
 * under `target`'s mount point and whether anything else could take the upgrade, so that a
 * mistyped path under the mount point is answered 404 before the handshake instead of being
 * accepted by express-ws and closed at once (1005). Opaque middleware is assumed to pass it
 * on; a mounted sub-application (Express's `mounted_app`) hides its routes, so it counts as
 * one that could take it.
 */
function survey(
  stack: LayerLike[],
  pathname: string,
  target: PushMiddleware,
  isEndpoint: (rest: string) => boolean,
  base: string,
  depth: number,
  out: UpgradeRoute,
): void {
  if (depth > 32) {
    out.other = true;
    return;
  }
  for (const layer of stack) {
    if (layer.route !== undefined) {
      if (routeTakes(layer, expressWsPath(pathname))) out.other = true;
      continue;
    }
    const prefix = matchedPrefix(layer, pathname);
    if (prefix === undefined) continue;
    let rest = pathname.slice(prefix.length);
    if (rest !== '' && rest[0] !== '/' && rest[0] !== '.') continue;
    if (!rest.startsWith('/')) rest = '/' + rest;
    if (layer.handle === target) {
      out.mount ??= base + prefix;
      if (isEndpoint(rest)) out.endpoint = true;
      continue;
    }
    const sub = stackOf(layer.handle);
    if (sub !== undefined) survey(sub, rest, target, isEndpoint, base + prefix, depth + 1, out);
    else if ((layer.handle as { name?: unknown } | undefined)?.name === 'mounted_app')
      out.other = true;
  }
}

/** An Express application: a request listener with a router stack. */
type ExpressApp = ((req: IncomingMessage, res: ServerResponse) => void) & { handle?: unknown };

/** The Express application an HTTP server calls for its requests (`app.listen`, `createServer(app)`). */
function appOfServer(httpServer: Server): ExpressApp | undefined {
  for (const listener of httpServer.listeners('request')) {
    if (typeof (listener as ExpressApp).handle === 'function' && stackOf(listener) !== undefined) {
      return listener as ExpressApp;
    }
  }
  return undefined;
}

/** True for a request that asks for an event stream (docs/PROTOCOL.md section 10). */
function asksForEventStream(req: IncomingMessage): boolean {
  return req.headers.accept?.toLowerCase().includes('text/event-stream') === true;
}

/** True for a request that asks for a WebSocket upgrade. */
function asksForWebSocket(req: IncomingMessage): boolean {
  return req.headers.upgrade?.toLowerCase() === 'websocket';
}

/**
 * Creates the push middleware. `handlers` is the plugin array, or an
 * options object ({@link PushOptions}) whose `plugins` is that array.
 * Throws TypeError for an invalid argument. Subscribing starts at once;
 * await `ready`.
 */
export function pushMiddleware(
  pubsub: PubSubClient,
  topic: string,
  handlers: Plugin[] | PushOptions = [],
): PushMiddleware {
  const options = resolveOptions(handlers);
  const server = new PushServer(pubsub, topic, options);
  const { logger } = options;
  const endpointLower = options.endpoint.toLowerCase();
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: options.maxPayload,
    perMessageDeflate: false,
    clientTracking: false,
    // Go clients (manipulate, through wsc) send MessagePack push configs in TEXT frames, which
    // ws would close with 1007; the JSON decoding of configs checks UTF-8 itself (strict).
    skipUTF8Validation: true,
  });
  wss.on('error', (error) =>
    logger.warn({ err: describeError(error) }, 'pushwire: ws server error'),
  );

  // Express matching is case-insensitive and ignores a trailing slash by default; so is this.
  const isEndpoint = (pathname: string): boolean => {
    let p = pathname.toLowerCase();
    if (p.length > 1 && p.endsWith('/')) p = p.replace(/\/+$/, '');
    return p === endpointLower || (endpointLower === '/' && p === '');
  };

  /** The PushError a failed session phase is answered with (an unexpected throw is a 500, logged). */
  const refusalOf = (error: unknown): PushError => {
    if (error instanceof PushError) return error;
    logger.error({ err: describeError(error) }, 'pushwire: session phase failed');
    return new PushError('Internal error', 'PUSH_INTERNAL', 500);
  };

  /**
   * Serves an event-stream request (docs/PROTOCOL.md section 10): the same session phase as an
   * upgrade, answered with the same refusals before any stream byte, then the stream.
   */
  const serveEventStream = (req: IncomingMessage, res: ServerResponse): void => {
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const onClose = (): void => {
      // Neither accepted nor refused yet: the client went away during the session phase.
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      server.recordAbandoned(req);
    };
    res.once('close', onClose);
    const settle = (): boolean => {
      if (settled) return false;
      settled = true;
      clearTimeout(timer);
      res.off('close', onClose);
      return true;
    };
    if (options.sessionTimeout > 0) {
      timer = setTimeout(() => {
        if (!settle()) return;
        server.recordRefusal(503, req, new Error('timeout'));
        writeRefusal(res, new PushError('Session initialization timed out', 'PUSH_TIMEOUT', 503));
      }, options.sessionTimeout);
      timer.unref();
    }
    server.openSession(req, 'sse').then(
      (session) => {
        if (!settle()) return;
        try {
          server.startEventStream(session, res);
        } catch (error) {
          logger.error({ err: describeError(error) }, 'pushwire: the event stream did not start');
          res.socket?.destroy();
        }
      },
      (error: unknown) => {
        const refusal = refusalOf(error);
        if (!settle()) return;
        server.recordRefusal(refusal.status, req, error);
        writeRefusal(res, refusal);
      },
    );
  };

  const completeHandshake = (
    req: UpgradeRequest,
    res: ServerResponse,
    pending: PendingUpgrade,
  ): void => {
    server.openSession(req).then(
      (session) => {
        if (pending.settled) return;
        pending.settled = true;
        clearTimeout(pending.timer);
        res.detachSocket(pending.socket as Socket);
        const { socket, head } = pending;
        // Our listeners go before ws adds its own (handleUpgrade adds an 'error' listener first and
        // completes synchronously): kept, they would hold the request (and all that Express hung
        // on it) for the life of the session. Removed only after ws added its listeners, they
        // made the socket's 'close' and 'end' listener arrays grow past two entries, and an
        // emitter's array keeps the capacity it grew to (20 slots, ~150 bytes each, per session).
        pending.release();
        pending.wss.handleUpgrade(req, socket, head, (ws) => {
          server.startSession(session, ws, socket as Socket);
        });
      },
      (error: unknown) => {
        const refusal = refusalOf(error);
        // Counted only if still pending: an attempt already answered 503 by the timeout, or whose
        // client left, was counted then; a late answer from a plugin must not count it twice.
        if (pending.settled) return;
        pending.settled = true;
        clearTimeout(pending.timer);
        server.recordRefusal(refusal.status, req, error);
        writeRefusal(res, refusal);
      },
    );
  };

  const handler = function pushEndpoint(
    req: IncomingMessage,
    res: ServerResponse,
    next: NextFunction,
  ): void {
    const request = req as UpgradeRequest;
    if (request[kUpgrade] === undefined) noticeServer(request);
    const pathname = pathnameOf(req.url);
    if (req.method !== 'GET' || !isEndpoint(pathname)) {
      // express-ws did the handshake itself (attach() missing, a sub-app, a URL rewrite):
      // this endpoint cannot run its checks on an open socket, so it refuses by policy.
      if (request.ws !== undefined && pathname.endsWith('/.websocket')) {
        const original = pathname.slice(0, -'/.websocket'.length);
        if (isEndpoint(original === '' ? '/' : original)) {
          request.wsHandled = true;
          logger.error(
            {},
            'pushwire: an upgrade reached the push endpoint after express-ws accepted it; call push.attach(ews) before listen (sub-app mounts are not supported)',
          );
          (request.ws as { close(code: number, reason: string): void }).close(
            1008,
            'push endpoint not attached',
          );
          return;
        }
      }
      next();
      return;
    }
    const pending = request[kUpgrade];
    if (pending === undefined && !asksForWebSocket(req) && asksForEventStream(req)) {
      serveEventStream(req, res);
      return;
    }
    if (pending === undefined && asksForWebSocket(req) && request.ws === undefined) {
      // An upgrade delivered as a plain request: the HTTP server had no 'upgrade' listener
      // (no expressWs(app, server)). This one cannot be upgraded any more (Node's HTTP parser
      // owns the socket), but noticeServer() just made pushwire serve the next ones: retry.
      res.setHeader('Retry-After', '0');
      writeRefusal(
        res,
        new PushError(
          'The push endpoint was not serving upgrades yet; retry',
          'PUSH_NOT_ATTACHED',
          503,
        ),
      );
      server.recordRefusal(503, req, new Error('upgrade delivered as a plain request'));
      return;
    }
    if (pending === undefined || pending.server !== server) {
      // A plain HTTP GET: tell the client what this endpoint expects.
      const error = new PushError(
        'This endpoint serves WebSocket upgrades, and event streams to a GET with Accept: text/event-stream',
        'PUSH_UPGRADE_REQUIRED',
        426,
      );
      res.setHeader('Upgrade', 'websocket');
      writeRefusal(res, error);
      return;
    }
    delete request[kUpgrade];
    completeHandshake(request, res, pending);
  } as PushMiddleware;

  /**
   * Handles an upgrade if it is this middleware's: a malformed handshake is refused as ws would
   * refuse it, a mistyped path under the mount point gets 404, the endpoint runs the Express
   * app and the plugin chain. All of it before any handshake. False: not ours, pass it on.
   */
  const intercept = (
    app: ExpressApp,
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
  ): boolean => {
    const stack = stackOf(app);
    if (stack === undefined) return false;
    const route: UpgradeRoute = { endpoint: false, mount: undefined, other: false };
    survey(stack, pathnameOf(req.url), handler, isEndpoint, '', 0, route);
    if (route.endpoint) {
      const malformed = malformedHandshake(req);
      if (malformed !== undefined) {
        server.recordRefusal(malformed.status, req, new Error(malformed.message));
        refuseOnSocket(
          socket,
          new PushError(malformed.message, 'PUSH_BAD_HANDSHAKE', malformed.status),
          malformed.headers,
        );
        return true;
      }
      onPushUpgrade(app, req as UpgradeRequest, socket, head);
      return true;
    }
    if (route.mount !== undefined && !route.other) {
      const mount = route.mount === '/' ? '' : route.mount.replace(/\/+$/, '');
      const message = `No WebSocket endpoint at ${pathnameOf(req.url).slice(0, 200)}; the push endpoint is ${mount}${options.endpoint}`;
      server.recordRefusal(404, req, new Error(message));
      refuseOnSocket(socket, new PushError(message, 'PUSH_NOT_FOUND', 404));
      return true;
    }
    return false;
  };

  /** Tells the user once how to fix their wiring: on the logger if there is one, else the console. */
  let warned = false;
  const warnOnce = (message: string): void => {
    if (warned) return;
    warned = true;
    if (logger === silentLogger) console.warn(message);
    else logger.error({}, message);
  };

  let attachedByUser = false;
  const watched = new WeakSet<Server>();
  /**
   * Without attach(), the first request of any kind that reaches this handler shows which HTTP
   * server serves the app: from then on its upgrades go through {@link intercept} first (the
   * server's `emit` is wrapped, so express-ws's listener, and listeners added later, stay
   * registered and removable). With no upgrade listener at all (no express-ws), one is added,
   * so that Node hands upgrades over instead of parsing them as plain requests, and pushwire
   * completes the handshakes itself; an upgrade that is not ours then goes to the 'request'
   * listeners, as Node would have done.
   */
  const noticeServer = (req: UpgradeRequest): void => {
    const httpServer = (req.socket as Socket & { server?: unknown }).server as Server | undefined;
    if (httpServer === undefined || typeof httpServer.listeners !== 'function') return;
    if (watched.has(httpServer)) return;
    // attach() covers the server express-ws listens on. An upgrade arriving as a plain request
    // shows that this server has no upgrade listener at all: attach() was given another one.
    const plainUpgrade = asksForWebSocket(req) && req.ws === undefined;
    if (attachedByUser && !plainUpgrade) return;
    watched.add(httpServer);
    const app = appOfServer(httpServer);
    const hadListener = httpServer.listenerCount('upgrade') > 0;
    if (app === undefined) {
      warnOnce(
        'pushwire: upgrades reach the push endpoint only through push.attach(ews): call it once, before listen (the HTTP server does not call an Express app directly, so pushwire cannot do it itself)',
      );
      return;
    }
    const emit = httpServer.emit;
    httpServer.emit = function (this: Server, event: string | symbol, ...args: unknown[]) {
      if (event === 'upgrade') {
        const [upgradeReq, socket, head] = args as [IncomingMessage, Duplex, Buffer];
        if (intercept(app, upgradeReq, socket, head)) return true;
      }
      return emit.apply(this, [event, ...args] as Parameters<Server['emit']>);
    } as Server['emit'];
    if (!hadListener) {
      httpServer.on(
        'upgrade',
        function serveAsRequest(upgradeReq: IncomingMessage, socket: Duplex) {
          // Only when no one else took upgrades since: what Node does without a listener.
          if (httpServer.listenerCount('upgrade') > 1) return;
          const res = new ServerResponse(upgradeReq);
          res.shouldKeepAlive = false;
          res.assignSocket(socket as Socket);
          res.on('finish', () => socket.end());
          socket.on('error', () => socket.destroy());
          httpServer.emit('request', upgradeReq, res);
        },
      );
      warnOnce(
        'pushwire: the HTTP server had no WebSocket upgrade handling (expressWs(app, server) and push.attach(ews) were not called): pushwire now serves upgrades of its endpoint itself; the first upgrade was answered 503 (retry). Call expressWs(app, server) and push.attach(ews) before listen',
      );
    } else {
      warnOnce(
        'pushwire: push.attach(ews) was not called: until the first request reached the push endpoint, express-ws accepted its upgrades before any check (and they were closed with 1008); pushwire now checks them before the handshake. Call push.attach(ews) once, before listen',
      );
    }
  };

  const attached = new WeakSet<object>();
  handler.attach = (ews: ExpressWsInstance): PushMiddleware => {
    if (ews === null || typeof ews !== 'object' || typeof ews.getWss !== 'function') {
      throw new TypeError('attach() takes the instance returned by expressWs(app)');
    }
    const app = ews.app as ExpressApp | undefined;
    if (typeof app !== 'function')
      throw new TypeError('attach(): the express-ws instance has no app');
    const upgradeServer = ews.getWss() as unknown as {
      handleUpgrade: (req: IncomingMessage, socket: Duplex, head: Buffer, cb: unknown) => void;
    };
    attachedByUser = true;
    if (attached.has(upgradeServer)) return handler;
    attached.add(upgradeServer);
    const previous = upgradeServer.handleUpgrade;
    upgradeServer.handleUpgrade = function (this: unknown, req, socket, head, cb) {
      if (!intercept(app, req, socket, head)) previous.call(this, req, socket, head, cb);
    };
    return handler;
  };

  const onPushUpgrade = (
    app: ExpressApp,
    req: UpgradeRequest,
    socket: Duplex,
    head: Buffer,
  ): void => {
    // A client may vanish mid-handshake: its socket errors must not become uncaught exceptions.
    const onError = (error: Error): void =>
      logger.debug({ err: describeError(error) }, 'pushwire: socket error during the handshake');
    socket.on('error', onError);
    const res = new ServerResponse(req);
    res.shouldKeepAlive = false;
    res.assignSocket(socket as Socket);
    // Once a refusal (ours or a middleware's) is written, the connection is done.
    res.on('finish', () => {
      // A middleware mounted before the endpoint answered (a rate limiter's 429): still a refusal.
      if (!pending.settled) {
        pending.settled = true;
        clearTimeout(pending.timer);
        server.recordRefusal(res.statusCode, req, new Error('answered by an Express middleware'));
      }
      socket.end();
    });
    const pending: PendingUpgrade = {
      server,
      socket,
      head,
      wss,
      settled: false,
      timer: undefined,
      release: () => {
        socket.off('error', onError);
        socket.off('close', onClose);
        socket.off('end', onEnd);
        pending.head = EMPTY;
      },
    };
    if (options.sessionTimeout > 0) {
      pending.timer = setTimeout(() => {
        if (pending.settled) return;
        pending.settled = true;
        server.recordRefusal(503, req, new Error('timeout'));
        writeRefusal(res, new PushError('Session initialization timed out', 'PUSH_TIMEOUT', 503));
        if (!res.headersSent) socket.destroy();
      }, options.sessionTimeout);
      pending.timer.unref();
    }
    const onClose = (): void => {
      // Neither accepted nor refused yet: the client went away mid-handshake.
      if (!pending.settled) server.recordAbandoned(req);
      pending.settled = true;
      clearTimeout(pending.timer);
    };
    socket.once('close', onClose);
    // The HTTP server's sockets allow half-open connections, so a client that leaves during a
    // slow session phase only ends its side and 'close' would wait for the plugins (or the
    // timeout). A WebSocket client never half-closes mid-handshake: end the attempt at once.
    const onEnd = (): void => {
      if (!pending.settled) socket.destroy();
    };
    socket.once('end', onEnd);
    // Before Express swaps their prototypes (see toDictionaryMode).
    toDictionaryMode(req);
    toDictionaryMode(res);
    req[kUpgrade] = pending;
    try {
      app(req, res);
    } catch (error) {
      logger.error({ err: describeError(error) }, 'pushwire: the Express app threw on an upgrade');
      socket.destroy();
    }
  };

  handler.publish = (...events: PushEvent[]) => server.publish({}, events);
  handler.publishWith = (opts: PublishOptions, ...events: PushEvent[]) =>
    server.publish(opts ?? {}, events);
  handler.sessions = () => server.sessions();
  handler.stats = () => server.stats();
  handler.onDispatch = (listener) => server.onDispatch(listener);
  // Exposed so that plugins on the public API (metrics) can follow the backend's state.
  Object.defineProperty(handler, 'pubsub', { value: pubsub, enumerable: true });
  handler.close = () => server.close().then(() => wss.close());
  Object.defineProperty(handler, 'ready', { value: server.ready, enumerable: true });
  Object.defineProperty(handler, 'endpoint', { value: options.endpoint, enumerable: true });
  return handler;
}
