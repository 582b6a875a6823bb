/**
 * Topic history on NATS JetStream, for {@link NatsPubSub}'s `history`
 * option: one stream per topic, positions from its sequence numbers, live
 * delivery and replay read out of that same stream.
 *
 * - **The stream.** Topic `events` is stored in the stream
 *   {@link streamName}(`events`) = `PUSHWIRE_events`, over the subjects
 *   `events` and `events.>`, file storage, limits retention, `max_msgs` =
 *   `maxEvents`, `max_age` = `maxAge`, oldest discarded first. It is created
 *   on first use of the topic (`follow`, `read`), and updated when it exists
 *   with other bounds or subjects. When another stream already stores the
 *   topic (one an operator made, or the stream of a topic above it), that
 *   stream is used as it is, and `follow`/`read` keep only the topic's
 *   subjects (`topic`, `topic.…`). A publish on a subject that no stream
 *   stores makes the stream of the known topic above it, or else of its
 *   first token (`events` for `events.task.create`), as LocalPubSub and
 *   Redis keep one history per first token.
 * - **Positions** are `<epoch>:<stream sequence>`. The epoch is the stream's
 *   creation time (nanoseconds, base 36): it survives broker restarts (the
 *   file store keeps it) and changes when the stream is deleted and made
 *   again, so that an old position is never taken for a new one.
 * - **Live delivery** (`follow`) is an ordered consumer, the NATS client's
 *   gapless in-order reader: it checks every delivery sequence and recreates
 *   its consumer after the last stream sequence it saw whenever something is
 *   missing, a reconnection included. Each new consumer's stream is checked
 *   against the epoch before its messages are delivered.
 * - **Replay** (`read`) is an ordered consumer too, started at `since` + 1
 *   and deleted after the read. (Direct batch gets need nats-server 2.11;
 *   a consumer works on every JetStream server this driver supports.)
 */
import type {
  JetStreamClient,
  JetStreamManager,
  StreamConfig,
  StreamInfo,
} from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { NotConnectedError, PubSubError } from '../errors.js';
import type {
  HistoryEntry,
  HistoryHandler,
  HistoryRead,
  ResolvedHistoryOptions,
  TopicHistory,
  Unsubscribe,
} from './contract.js';
import { isUnder, JetStreamFollower, NO_STREAM, streamEpoch } from './jetstream-follower.js';

export { streamEpoch } from './jetstream-follower.js';

/** The code of a PubSubError raised because the broker cannot be reached. */
const UNREACHABLE = 'PUSH_PUBSUB_UNREACHABLE';

/** The JetStream driver, an optional peer dependency: loaded on first use of a history. */
type Driver = typeof import('@nats-io/jetstream');
let driverLoad: Promise<Driver> | undefined;
let driver: Driver | undefined;

function loadDriver(): Promise<Driver> {
  driverLoad ??= import('@nats-io/jetstream').then(
    (module) => (driver = module),
    (error: unknown) => {
      driverLoad = undefined;
      throw new PubSubError(
        'NatsPubSub: the history option needs @nats-io/jetstream (npm install @nats-io/jetstream)',
        'PUSH_PUBSUB',
        { cause: error },
      );
    },
  );
  return driverLoad;
}

/** JetStream API error codes this module tells apart. */
const STREAM_NOT_FOUND = 10059;
const SUBJECTS_OVERLAP = 10065;
const NAME_IN_USE = 10058;

/** How long a replay's pull may wait for messages known to be stored, in ms. */
const READ_EXPIRES_MS = 5_000;
/** The most messages one pull of a replay asks for. */
const READ_BATCH_MAX = 1_000;
/** A replay consumer left behind (its delete lost) is removed by the server after this, in ms. */
const READ_INACTIVE_MS = 30_000;
/**
 * Reads (replays) in flight at once per backend; the others wait their turn, in order. Each read
 * is a handful of JetStream API requests (stream info, a consumer, its fetch, its deletion), and
 * a reconnect storm resumes thousands of sessions at once: unbounded, nats-server answered them
 * past the request timeout (10,000 reads at once on a 2-core machine: 71% timed out, so 71% of
 * the sessions were told `recovered: false`; bench/storm.ts found it).
 */
const READS_IN_FLIGHT = 32;

/**
 * The name of the stream that keeps `topic`'s history: `PUSHWIRE_` then the
 * topic with every character other than `A-Z a-z 0-9 -` written `_XX` (its
 * UTF-8 bytes in hex), so that distinct topics never share a stream:
 * `events` → `PUSHWIRE_events`, `app.events` → `PUSHWIRE_app_2Eevents`.
 */
export function streamName(topic: string): string {
  let escaped = '';
  for (const byte of new TextEncoder().encode(topic)) {
    const char = String.fromCharCode(byte);
    escaped += /[A-Za-z0-9-]/.test(char)
      ? char
      : `_${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return `PUSHWIRE_${escaped}`;
}

/** A position taken apart; undefined when it does not parse. */
export function parsePosition(position: string): { epoch: string; seq: number } | undefined {
  if (typeof position !== 'string') return undefined;
  const colon = position.lastIndexOf(':');
  const epoch = position.slice(0, colon);
  const digits = position.slice(colon + 1);
  if (colon < 1 || !/^[0-9a-z]+$/.test(epoch) || !/^(0|[1-9][0-9]{0,15})$/.test(digits)) {
    return undefined;
  }
  const seq = Number(digits);
  return Number.isSafeInteger(seq) ? { epoch, seq } : undefined;
}

/** What {@link JetStreamHistory} needs of its {@link NatsPubSub}. */
export interface JetStreamHistoryHost {
  /** The open connection, or throws the rejection to give (NotConnectedError, unreachable). */
  connection(operation: string): NatsConnection;
  /** Reports what must not escape (a handler that threw, a consumer that failed). */
  report(error: unknown): void;
}

/** The JetStream clients of one connection. */
interface Clients {
  connection: NatsConnection;
  js: JetStreamClient;
  jsm?: JetStreamManager;
}

/**
 * The {@link TopicHistory} of a {@link NatsPubSub} whose `history` option is
 * set; it also carries that backend's publish path. Internal to the NATS
 * backend: applications reach it as `pubsub.history`.
 */
export class JetStreamHistory implements TopicHistory {
  /** The bounds of every stream this history creates. */
  readonly options: ResolvedHistoryOptions;
  readonly #host: JetStreamHistoryHost;
  #clients: Clients | undefined;
  /** Topic → the stream that keeps it, once ensured on the broker. */
  readonly #streams = new Map<string, Promise<string>>();
  /** The attempts of `#streams` still in flight. */
  readonly #making = new Set<Promise<string>>();
  /** Every topic followed or read: publish makes the stream of the one above a subject again. */
  readonly #topics = new Set<string>();
  readonly #followers = new Set<JetStreamFollower>();
  /** Reads running now, and the turns of those waiting (READS_IN_FLIGHT). */
  #reading = 0;
  readonly #readTurns: Array<() => void> = [];

  /** Creates the history; nothing happens on the network until it is used. */
  constructor(options: ResolvedHistoryOptions, host: JetStreamHistoryHost) {
    this.options = options;
    this.#host = host;
  }

  /**
   * Publishes through JetStream: resolves once the stream stored the payload
   * (its PubAck). When no stream answers for the subject, the stream of the
   * known topic above it (it may have been deleted), or else of its first
   * token, is made and the publish is tried once more. Rejects with a
   * PubSubError `PUSH_PUBSUB_UNREACHABLE` when the broker or JetStream does
   * not answer (a publish that timed out may still have been stored),
   * `PUSH_PUBSUB` when JetStream refuses the message or that stream cannot
   * be made (its subjects overlap another stream's); NotConnectedError once
   * the connection is closed. With `id`, the stream stores one payload per id within its
   * duplicate window (2 minutes by default): a retry of a publish whose PubAck was lost is not
   * stored twice.
   */
  async publish(subject: string, payload: Uint8Array, id?: string): Promise<void> {
    const { js } = await this.#use('publish');
    const options = id === undefined ? undefined : { msgID: id };
    try {
      await js.publish(subject, payload, options);
      return;
    } catch (error) {
      if (!isNoStream(error)) throw wrap(error, `publish to ${subject}`);
    }
    // No stream stores the subject (yet, or any more): make the one of the known topic above
    // it, or else the one of its first token, as LocalPubSub and Redis keep their histories.
    const topic = this.#topicOf(subject) ?? subject.split('.', 1)[0] ?? subject;
    await this.#ensure(topic, true);
    try {
      await (await this.#use('publish')).js.publish(subject, payload, options);
    } catch (error) {
      throw wrap(error, `publish to ${subject}`);
    }
  }

  /**
   * Delivers every payload stored under `topic` after the stream's last
   * sequence at the time of the call, in order, once each, with its
   * position — across reconnections and broker restarts (the file store
   * keeps the stream). When the stream is deleted and made again, delivery
   * goes on from the start of the new stream, positions in its new epoch.
   * Rejects like `publish()` when the broker cannot be reached. The returned
   * function stops delivery; idempotent.
   */
  async follow(topic: string, handler: HistoryHandler): Promise<Unsubscribe> {
    const name = await this.#ensure(topic, false);
    const info = await this.#info(topic, name);
    const follower = new JetStreamFollower(this, topic, info, handler);
    this.#followers.add(follower);
    try {
      await follower.open();
    } catch (error) {
      follower.stop();
      this.#followers.delete(follower);
      throw wrap(error, `follow ${topic}`);
    }
    return async () => {
      follower.stop();
      this.#followers.delete(follower);
    };
  }

  /**
   * The stored events of `topic` after `since`, oldest first, at most `max`
   * (a positive integer, else a RangeError). `recovered` is false, with no
   * entries, for a `since` that does not parse, is of another epoch, is past
   * the newest event, or whose successor was trimmed. Rejects with a
   * PubSubError when the broker cannot be reached.
   */
  async read(topic: string, since: string, max: number): Promise<HistoryRead> {
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new RangeError(`history.read: max must be a positive integer, got ${String(max)}`);
    }
    if (this.#reading >= READS_IN_FLIGHT) {
      await new Promise<void>((resolve) => this.#readTurns.push(resolve));
    }
    this.#reading++;
    try {
      return await this.#read(topic, since, max);
    } finally {
      this.#reading--;
      this.#readTurns.shift()?.();
    }
  }

  async #read(topic: string, since: string, max: number): Promise<HistoryRead> {
    const name = await this.#ensure(topic, false);
    const info = await this.#info(topic, name);
    const epoch = streamEpoch(info.created);
    const { first_seq: first, last_seq: last } = info.state;
    const head = `${epoch}:${last}`;
    const from = parsePosition(since);
    const lost: HistoryRead = { recovered: false, entries: [], more: false, head };
    if (!from || from.epoch !== epoch || from.seq > last || from.seq < first - 1) return lost;
    if (from.seq === last) return { recovered: true, entries: [], more: false, head };

    const stream = info.config.name;
    const { entries, more, firstSeq } = await this.#fetch(
      stream,
      topic,
      epoch,
      from.seq + 1,
      max,
      last,
    );
    // What was read must come from the stream whose state was checked, and nothing
    // between `since` and the first entry may have been trimmed meanwhile.
    const after = await this.#info(topic, name);
    if (streamEpoch(after.created) !== epoch) return lost;
    // A gap after `since` is trimming when the stream now starts past it (otherwise an
    // operator deleted single messages: what is left is all there is).
    if (firstSeq !== from.seq + 1 && after.state.first_seq > from.seq + 1) return lost;
    return { recovered: true, entries, more, head };
  }

  /** Orders two positions of one epoch by sequence; NaN when either does not parse or their epochs differ. */
  compare(a: string, b: string): number {
    const left = parsePosition(a);
    const right = parsePosition(b);
    if (!left || !right || left.epoch !== right.epoch) return Number.NaN;
    return Math.sign(left.seq - right.seq);
  }

  /** Stops every live delivery; the streams stay. Called by the backend's `disconnect()`. */
  close(): void {
    for (const follower of this.#followers) follower.stop();
    this.#followers.clear();
    this.#clients = undefined;
    this.#streams.clear();
  }

  /** The JetStream clients of the current connection (made again after `connect()` gives a new one). */
  async #use(operation: string): Promise<Clients> {
    const connection = this.#host.connection(operation);
    const { jetstream } = driver ?? (await loadDriver());
    if (this.#clients?.connection !== connection) {
      // checkAPI off: no account-info round trip; a broker without JetStream shows on first use.
      this.#clients = { connection, js: jetstream(connection, { checkAPI: false }) };
    }
    return this.#clients;
  }

  async #manager(operation: string): Promise<JetStreamManager> {
    const clients = await this.#use(operation);
    const { jetstreamManager } = driver ?? (await loadDriver());
    // Asynchronous only for its optional API check, which is off: no round trip.
    clients.jsm ??= await jetstreamManager(clients.connection, { checkAPI: false });
    return clients.jsm;
  }

  /** The longest known topic that `subject` is or lies under. */
  #topicOf(subject: string): string | undefined {
    let found: string | undefined;
    for (const topic of this.#topics) {
      const under = isUnder(subject, topic);
      if (under && (found === undefined || topic.length > found.length)) found = topic;
    }
    return found;
  }

  /** The name of the stream that keeps `topic`, made or updated on the broker once (again when `again`). */
  #ensure(topic: string, again: boolean): Promise<string> {
    this.#topics.add(topic);
    const known = this.#streams.get(topic);
    // An attempt in flight is shared, even when asked again: two creations of one stream
    // racing with its deletion can leave nats-server with a broken store.
    if (known && (!again || this.#making.has(known))) return known;
    const attempt = this.#makeStream(topic);
    this.#streams.set(topic, attempt);
    this.#making.add(attempt);
    attempt.then(
      () => {
        this.#making.delete(attempt);
        // Made again: the followers of this client need not wait for heartbeats to notice.
        if (again) for (const follower of this.#followers) follower.recheck(topic);
      },
      () => {
        this.#making.delete(attempt);
        // A failed attempt is not remembered: the next use tries again.
        if (this.#streams.get(topic) === attempt) this.#streams.delete(topic);
      },
    );
    return attempt;
  }

  async #makeStream(topic: string): Promise<string> {
    const jsm = await this.#manager(`history of ${topic}`);
    const { StorageType, RetentionPolicy, DiscardPolicy } = driver ?? (await loadDriver());
    const name = streamName(topic);
    const wanted: Partial<StreamConfig> & { name: string; subjects: string[] } = {
      name,
      subjects: [topic, `${topic}.>`],
      max_msgs: this.options.maxEvents,
      max_age: this.options.maxAge * 1_000_000,
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.Old,
    };
    try {
      let info: StreamInfo;
      try {
        info = await jsm.streams.info(name);
      } catch (error) {
        if (apiCode(error) !== STREAM_NOT_FOUND) throw error;
        // A stream that already stores the topic (an operator's, or the one of a topic above
        // it) is used as it is, bounds and all: follow and read keep the topic's subjects.
        const existing = await this.#streamOf(jsm, topic);
        if (existing !== undefined) return existing;
        try {
          await jsm.streams.add(wanted);
          return name;
        } catch (addError) {
          const code = apiCode(addError);
          if (code === SUBJECTS_OVERLAP) {
            // Made by another server meanwhile, or a stream of subjects below the topic.
            const found = await this.#streamOf(jsm, topic);
            if (found !== undefined) return found;
          }
          if (code !== NAME_IN_USE) throw addError;
          // Another server made it first, with other bounds: update it like an existing one.
          info = await jsm.streams.info(name);
        }
      }
      const { config } = info;
      const same =
        config.max_msgs === wanted.max_msgs &&
        config.max_age === wanted.max_age &&
        config.subjects?.length === 2 &&
        config.subjects.includes(topic) &&
        config.subjects.includes(`${topic}.>`);
      if (!same) {
        await jsm.streams.update(name, {
          subjects: wanted.subjects,
          max_msgs: this.options.maxEvents,
          max_age: this.options.maxAge * 1_000_000,
        });
      }
      return name;
    } catch (error) {
      throw wrap(error, `make the JetStream stream ${name} for ${topic}`);
    }
  }

  /** The stream that stores `topic`'s own subject, if there is one. */
  async #streamOf(jsm: JetStreamManager, topic: string): Promise<string | undefined> {
    try {
      return await jsm.streams.find(topic);
    } catch (error) {
      // The driver answers "no stream matches subject" as a stream not found.
      if (apiCode(error) === STREAM_NOT_FOUND) return undefined;
      throw error;
    }
  }

  /**
   * The stream's info. When it is gone it is made again first (a new
   * epoch), unless `make` is false: it then rejects with a PubSubError of
   * code `PUSH_PUBSUB_NO_STREAM`.
   */
  async #info(topic: string, name: string, make = true): Promise<StreamInfo> {
    const jsm = await this.#manager(`history of ${topic}`);
    try {
      return await jsm.streams.info(name);
    } catch (error) {
      if (apiCode(error) !== STREAM_NOT_FOUND) throw wrap(error, `read the stream ${name}`);
      if (!make) {
        throw new PubSubError(`NatsPubSub: the stream ${name} is gone`, NO_STREAM, {
          cause: error,
        });
      }
    }
    const again = await this.#ensure(topic, true);
    try {
      return await jsm.streams.info(again);
    } catch (error) {
      throw wrap(error, `read the stream ${again}`);
    }
  }

  /**
   * Reads, with a throwaway ordered consumer, the messages from `start` to
   * `last` and keeps the first `max` of `topic`'s subjects (all of them in
   * the topic's own stream; a wider stream also holds other subjects).
   * `more` tells whether another of them follows; `firstSeq` is the first
   * sequence found at all, to tell trimming from a read that started on time.
   */
  async #fetch(
    name: string,
    topic: string,
    epoch: string,
    start: number,
    max: number,
    last: number,
  ): Promise<{ entries: HistoryEntry[]; more: boolean; firstSeq: number | undefined }> {
    const { js } = await this.#use('read');
    const entries: HistoryEntry[] = [];
    let more = false;
    let firstSeq: number | undefined;
    let seen = start - 1;
    try {
      const consumer = await js.consumers.get(name, {
        opt_start_seq: start,
        inactive_threshold: READ_INACTIVE_MS,
      });
      try {
        scan: while (seen < last) {
          // One past `max` tells `more`; never more than is stored, so that a pull ends on its
          // last message rather than on its expiry.
          const batch = Math.min(max + 1 - entries.length, last - seen, READ_BATCH_MAX);
          const messages = await consumer.fetch({ max_messages: batch, expires: READ_EXPIRES_MS });
          let got = 0;
          for await (const msg of messages) {
            got++;
            firstSeq ??= msg.seq;
            seen = msg.seq;
            if (isUnder(msg.subject, topic)) {
              if (entries.length === max) {
                more = true;
                break scan;
              }
              // A copy: the entry outlives the driver's buffer.
              entries.push({
                payload: msg.data.slice(),
                subject: msg.subject,
                position: `${epoch}:${msg.seq}`,
              });
            }
            if (msg.seq >= last || msg.info.pending === 0) break scan;
          }
          // Nothing before the pull expired: what was stored is gone (trimmed meanwhile).
          if (got === 0) break;
        }
      } finally {
        consumer.delete().catch(() => undefined);
      }
    } catch (error) {
      throw wrap(error, `read the stream ${name}`);
    }
    return { entries, more, firstSeq };
  }

  /** @internal For {@link JetStreamFollower}: the clients, the manager included. */
  async clients(operation: string): Promise<Required<Clients>> {
    const jsm = await this.#manager(operation);
    const clients = await this.#use(operation);
    return { ...clients, jsm };
  }

  /** @internal For {@link JetStreamFollower}. */
  streamInfo(topic: string, name: string, make: boolean): Promise<StreamInfo> {
    return this.#info(topic, name, make);
  }

  /** @internal For {@link JetStreamFollower}. */
  report(error: unknown): void {
    this.#host.report(error);
  }
}

/** The JetStream API error code of `error`, if it is one. */
function apiCode(error: unknown): number | undefined {
  return driver && error instanceof driver.JetStreamApiError ? error.code : undefined;
}

/** True when no stream answered a JetStream publish (the driver calls it "not enabled"). */
function isNoStream(error: unknown): boolean {
  return error instanceof Error && error.name === 'JetStreamNotEnabled';
}

/** A driver error as the PubSubError the contract promises. */
function wrap(error: unknown, what: string): PubSubError {
  if (error instanceof PubSubError) return error;
  const message = error instanceof Error ? error.message : String(error);
  const name = error instanceof Error ? error.name : '';
  if (name === 'ClosedConnectionError') {
    return new NotConnectedError(`NatsPubSub: ${what}: the connection is closed`, { cause: error });
  }
  // No answer (the broker is going away, JetStream is restarting), or a failure on the
  // server's side (a store error while a stream is being made again): the caller may retry.
  const serverFailure =
    driver !== undefined && error instanceof driver.JetStreamApiError && error.status >= 500;
  const transient =
    serverFailure ||
    name === 'TimeoutError' ||
    name === 'JetStreamNotEnabled' ||
    name === 'NoRespondersError' ||
    (name === 'RequestError' && /no responders|timeout/i.test(message));
  return new PubSubError(
    `NatsPubSub: ${what}: ${message}`,
    transient ? UNREACHABLE : 'PUSH_PUBSUB',
    {
      cause: error,
    },
  );
}
