/**
 * A client child: many WebSocket sessions over loopback, on raw TCP, doing
 * as little per message as possible so that the server is what is
 * measured. It writes the upgrade request itself, then only walks frame
 * headers and counts data frames; it reads a payload only to answer
 * socket.io's handshake and pings, and, while latency is recorded, to find
 * the sequence number and send time in the entity.
 *
 * Driven by the orchestrator over IPC ({@link ClientCommand}).
 */
import { connect as connectTcp, type Socket } from 'node:net';
import {
  bucketOf,
  HISTOGRAM_BUCKETS,
  MARK,
  nowMs,
  nowUs,
  readMark,
  toParent,
  type ClientCommand,
  type ClientProtocol,
  type LatencyReport,
} from './common.js';

const MARK_BYTES = Buffer.from(MARK);
const HEADER_END = Buffer.from('\r\n\r\n');
/** The blank line that ends an SSE event (pushwire writes `\n` line ends). */
const SSE_EVENT_END = Buffer.from('\n\n');
const COLON = 0x3a;
const CONNECT_TIMEOUT_MS = 15_000;

/** Events received by this child's reading sessions (slow ones never read, so never count). */
let events = 0;
let latencyOn = false;
let latencyFromSeq = 0;
let latencyDeliveries = 0;
const histogram = new Float64Array(HISTOGRAM_BUCKETS);
/** Per event: the largest latency seen here (µs) and how many sessions here got it. */
const perEvent = new Map<number, { max: number; sessions: number }>();

/**
 * A client frame: final, masked (clients must mask) with a zero key, which
 * leaves the payload as it is and is still a valid mask.
 */
function clientFrame(opcode: number, payload: Buffer): Buffer {
  const length = payload.length;
  const header = length < 126 ? 2 : 4;
  const frame = Buffer.alloc(header + 4 + length);
  frame[0] = 0x80 | opcode;
  if (length < 126) frame[1] = 0x80 | length;
  else {
    frame[1] = 0x80 | 126;
    frame.writeUInt16BE(length, 2);
  }
  payload.copy(frame, header + 4);
  return frame;
}

const SOCKETIO_CONNECT = clientFrame(0x1, Buffer.from('40'));
const SOCKETIO_PONG = clientFrame(0x1, Buffer.from('3'));

function recordLatency(buf: Buffer, start: number, end: number, receivedUs: number): void {
  const mark = readMark(buf, start, end, MARK_BYTES);
  if (mark === undefined || mark.seq < latencyFromSeq) return;
  const latency = receivedUs - mark.sentUs;
  const bucket = bucketOf(latency);
  histogram[bucket] = (histogram[bucket] ?? 0) + 1;
  latencyDeliveries++;
  const entry = perEvent.get(mark.seq);
  if (entry === undefined) perEvent.set(mark.seq, { max: latency, sessions: 1 });
  else {
    entry.sessions++;
    if (latency > entry.max) entry.max = latency;
  }
}

/** One session. */
class Session {
  readonly socket: Socket;
  #rest: Buffer | undefined;
  #handshaking = true;
  #opened = false;
  #onOpen: ((error?: Error) => void) | undefined;

  constructor(
    port: number,
    path: string,
    private readonly protocol: ClientProtocol,
    headers: Record<string, string>,
    private readonly config: string | undefined,
    readonly slow: boolean,
    localAddress: string | undefined,
    onOpen: (error?: Error) => void,
  ) {
    this.#onOpen = onOpen;
    const socket = connectTcp(
      localAddress === undefined
        ? { host: '127.0.0.1', port }
        : { host: '127.0.0.1', port, localAddress },
    );
    this.socket = socket;
    socket.setNoDelay(true);
    const extra = Object.entries(headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('');
    socket.on('connect', () => {
      if (protocol === 'sse') {
        // The config of an event stream is in its URL (docs/PROTOCOL.md section 10).
        const query = config === undefined ? '' : `?config=${encodeURIComponent(config)}`;
        socket.write(
          `GET ${path}${query} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
            `Accept: text/event-stream\r\n${extra}\r\n`,
        );
        return;
      }
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
          'Connection: Upgrade\r\nSec-WebSocket-Key: cHVzaHdpcmUtYmVuY2gtMQ==\r\n' +
          `Sec-WebSocket-Version: 13\r\n${extra}\r\n`,
      );
    });
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (error) => this.#settle(error));
    socket.on('close', () => this.#settle(new Error('closed before it opened')));
  }

  get open(): boolean {
    return this.#opened && !this.socket.destroyed;
  }

  #settle(error?: Error): void {
    const done = this.#onOpen;
    if (done === undefined) return;
    this.#onOpen = undefined;
    if (error === undefined) {
      this.#opened = true;
      // A slow consumer stops reading for good: the kernel buffers fill, then the server's.
      if (this.slow) this.socket.pause();
    }
    done(error);
  }

  #onData(chunk: Buffer): void {
    let buf = this.#rest === undefined ? chunk : Buffer.concat([this.#rest, chunk]);
    this.#rest = undefined;
    let offset = 0;
    if (this.#handshaking) {
      const end = buf.indexOf(HEADER_END);
      if (end === -1) {
        this.#rest = buf;
        return;
      }
      const status = buf.toString('latin1', 0, Math.min(end, 200)).split(' ')[1];
      if (status !== (this.protocol === 'sse' ? '200' : '101')) {
        this.#settle(
          new Error(`handshake refused: ${buf.toString('latin1', 0, Math.min(end, 200))}`),
        );
        this.socket.destroy();
        return;
      }
      this.#handshaking = false;
      offset = end + 4;
      if (this.protocol === 'sse') this.#settle();
      if (this.protocol === 'push') {
        if (this.config !== undefined)
          this.socket.write(clientFrame(0x1, Buffer.from(this.config)));
        this.#settle();
      }
      if (offset === buf.length) return;
      buf = buf.subarray(offset);
      offset = 0;
    }
    // Every frame of one read arrived at the same time: one clock read for all of them.
    const receivedUs = latencyOn ? nowUs() : 0;
    if (this.protocol === 'sse') {
      this.#onStream(buf, receivedUs);
      return;
    }
    const length = buf.length;
    while (length - offset >= 2) {
      const b0 = buf[offset] as number;
      const b1 = buf[offset + 1] as number;
      let payloadLength = b1 & 0x7f;
      let header = 2;
      if (payloadLength === 126) {
        if (length - offset < 4) break;
        payloadLength = buf.readUInt16BE(offset + 2);
        header = 4;
      } else if (payloadLength === 127) {
        if (length - offset < 10) break;
        payloadLength = buf.readUInt32BE(offset + 2) * 0x100000000 + buf.readUInt32BE(offset + 6);
        header = 10;
      }
      if (b1 & 0x80) header += 4;
      const start = offset + header;
      const end = start + payloadLength;
      if (end > length) break;
      const opcode = b0 & 0x0f;
      if (opcode === 0x1 || opcode === 0x2) {
        if (this.protocol === 'push') {
          events++;
          if (latencyOn) recordLatency(buf, start, end, receivedUs);
        } else this.#onSocketIoPacket(buf, start, end, receivedUs);
      } else if (opcode === 0x9) {
        this.socket.write(clientFrame(0xa, Buffer.from(buf.subarray(start, end))));
      }
      offset = end;
    }
    if (offset < length) this.#rest = buf.subarray(offset);
  }

  /** SSE events end at a blank line; one that starts with `:` is a keepalive comment. */
  #onStream(buf: Buffer, receivedUs: number): void {
    let offset = 0;
    let end: number;
    while ((end = buf.indexOf(SSE_EVENT_END, offset)) !== -1) {
      if (buf[offset] !== COLON) {
        events++;
        if (latencyOn) recordLatency(buf, offset, end, receivedUs);
      }
      offset = end + 2;
    }
    if (offset < buf.length) this.#rest = buf.subarray(offset);
  }

  /** engine.io packet types: 0 open, 2 ping, 4 message; socket.io: 40 connect, 42 event. */
  #onSocketIoPacket(buf: Buffer, start: number, end: number, receivedUs: number): void {
    const c0 = buf[start];
    if (c0 === 0x34 /* 4 */) {
      const c1 = buf[start + 1];
      if (c1 === 0x32 /* 2 */) {
        events++;
        if (latencyOn) recordLatency(buf, start, end, receivedUs);
      } else if (c1 === 0x30 /* 0 */ && !this.#opened) this.#settle();
    } else if (c0 === 0x32 && end - start === 1) {
      this.socket.write(SOCKETIO_PONG);
    } else if (c0 === 0x30 /* 0 */) {
      this.socket.write(SOCKETIO_CONNECT);
    }
  }
}

let sessions: Session[] = [];

function openSession(
  command: Extract<ClientCommand, { type: 'connect' }>,
  slow: boolean,
  localAddress: string | undefined,
): Promise<Session> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      session.socket.destroy();
      reject(new Error('connect timeout'));
    }, CONNECT_TIMEOUT_MS);
    const session: Session = new Session(
      command.port,
      command.path,
      command.protocol,
      command.headers,
      command.config,
      slow,
      localAddress,
      (error) => {
        clearTimeout(timer);
        if (error === undefined) resolve(session);
        else {
          session.socket.destroy();
          reject(error);
        }
      },
    );
  });
}

async function connectAll(command: Extract<ClientCommand, { type: 'connect' }>): Promise<void> {
  events = 0;
  let next = 0;
  let failed = 0;
  let firstError: string | undefined;
  // The slow consumers are spread evenly among the others, not the last ones to connect.
  const stride = command.slow > 0 ? Math.max(1, Math.floor(command.count / command.slow)) : 0;
  const addresses = command.localAddresses ?? [];
  // Failures in a row: past the server's limit every attempt fails, and each one can take the
  // whole connect timeout, so the scale phase stops there (what broke is in the first error).
  let failedInARow = 0;
  const giveUp = command.stopAfterFailures ?? Infinity;
  const worker = async (): Promise<void> => {
    while (next < command.count && failedInARow < giveUp) {
      const index = next++;
      const slow = stride > 0 && index % stride === 0 && index / stride < command.slow;
      try {
        const address = addresses.length === 0 ? undefined : addresses[index % addresses.length];
        sessions.push(await openSession(command, slow, address));
        failedInARow = 0;
      } catch (error) {
        failed++;
        failedInARow++;
        const code = (error as NodeJS.ErrnoException).code;
        firstError ??= (code === undefined ? '' : `${code}: `) + (error as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, command.concurrency) }, () => worker()));
  toParent({
    type: 'connected',
    open: sessions.filter((s) => s.open).length,
    failed,
    firstError,
  });
}

function latencyReport(): LatencyReport {
  const buckets: Array<[number, number]> = [];
  for (let i = 0; i < histogram.length; i++) {
    const count = histogram[i] as number;
    if (count > 0) buckets.push([i, count]);
  }
  const events: Array<[number, number, number]> = [];
  for (const [seq, entry] of perEvent) events.push([seq, entry.max, entry.sessions]);
  return { buckets, perEvent: events, deliveries: latencyDeliveries };
}

process.on('message', (command: ClientCommand) => {
  switch (command.type) {
    case 'connect':
      void connectAll(command);
      break;
    case 'snapshot': {
      const cpu = process.cpuUsage();
      let reading = 0;
      for (const s of sessions) if (s.open && !s.slow) reading++;
      toParent({
        type: 'snapshot',
        snapshot: { events, cpuUs: cpu.user + cpu.system, timeMs: nowMs(), reading },
      });
      break;
    }
    case 'latency-start':
      histogram.fill(0);
      perEvent.clear();
      latencyDeliveries = 0;
      latencyFromSeq = command.fromSeq;
      latencyOn = true;
      toParent({ type: 'latency-started' });
      break;
    case 'latency-report':
      latencyOn = false;
      toParent({ type: 'latency-report', report: latencyReport() });
      break;
    case 'close':
      latencyOn = false;
      for (const s of sessions) s.socket.destroy();
      sessions = [];
      events = 0;
      toParent({ type: 'closed' });
      break;
  }
});
process.on('disconnect', () => process.exit(0));
