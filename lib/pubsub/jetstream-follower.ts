/**
 * Live delivery out of a JetStream stream (`follow()` of the NATS history,
 * jetstream.ts): an ordered consumer re-opened after every gap or broker
 * restart, each new consumer checked against the stream's epoch. Apart
 * from jetstream.ts, which makes the streams, publishes and replays.
 */
import type {
  ConsumerMessages,
  JetStreamClient,
  JetStreamManager,
  JsMsg,
  StreamInfo,
} from '@nats-io/jetstream';
import { PubSubError } from '../errors.js';
import type { HistoryHandler } from './contract.js';

/** What a follower needs of the history it follows (jetstream.ts's JetStreamHistory). */
export interface FollowerSource {
  /** The JetStream clients of the current connection, the manager included. */
  clients(operation: string): Promise<{ js: JetStreamClient; jsm: JetStreamManager }>;
  /** The stream's info, made first when `make` is set. */
  streamInfo(topic: string, name: string, make: boolean): Promise<StreamInfo>;
  /** Reports what must not escape into the driver (the backend's `onError`). */
  report(error: unknown): void;
}

/** The code of the PubSubError of a stream that is gone, when it is not to be made again. */
export const NO_STREAM = 'PUSH_PUBSUB_NO_STREAM';

/**
 * How long a pull of the live consumer stays open, in ms. Shorter than the
 * driver's 30 s default so that, after a broker restart, a consumer check
 * that failed is retried within seconds (the driver backs off up to this).
 */
const FOLLOW_EXPIRES_MS = 5_000;

/** Bounds of the pause before a live consumer is opened again after it stopped, in ms. */
const REOPEN_MIN_MS = 100;
const REOPEN_MAX_MS = 5_000;

/**
 * The epoch of a stream: its creation time (`created`, RFC 3339 with up to
 * nanoseconds) as nanoseconds since 1970 in base 36. A timestamp that does
 * not parse is kept as its letters and digits, still unique to the stream.
 */
export function streamEpoch(created: string): string {
  const match = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/.exec(created);
  const ms = match ? Date.parse(`${match[1]}${match[3]}`) : Number.NaN;
  if (!match || Number.isNaN(ms)) return created.toLowerCase().replace(/[^0-9a-z]/g, '') || '0';
  const nanos = BigInt(ms) * 1_000_000n + BigInt((match[2] ?? '').padEnd(9, '0'));
  return nanos.toString(36);
}

/** True when `subject` is `topic` or lies under it. */
export function isUnder(subject: string, topic: string): boolean {
  return subject === topic || (subject.startsWith(topic) && subject.charAt(topic.length) === '.');
}

/**
 * One `follow()`: an ordered consumer whose messages are handed on in
 * order, each once. Every consumer it opens is checked to read the stream
 * of the current epoch (a stream made again restarts delivery from its
 * first message, in the new epoch). When the driver recreates the consumer
 * by itself (after a gap, or when a restarted broker lost it), the follower
 * opens a fresh one after the last message it handed on instead: the
 * driver's recreated consumer keeps the pull accounting of the lost one
 * and can stall for two heartbeats, and it was never checked against the
 * epoch.
 */
export class JetStreamFollower {
  readonly #history: FollowerSource;
  readonly #topic: string;
  readonly #handler: HistoryHandler;
  #stream: string;
  #epoch: string;
  /** The sequence of the last message handed on (or the start point). */
  #seq: number;
  #messages: ConsumerMessages | undefined;
  /** The consumer whose messages are handed on: the one this follower opened last. */
  #consumer: string | undefined;
  #active = true;
  #reopenDelay = REOPEN_MIN_MS;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** The next attempt to open a consumer, while one is scheduled. */
  #retry: (() => void) | undefined;

  constructor(history: FollowerSource, topic: string, info: StreamInfo, handler: HistoryHandler) {
    this.#history = history;
    this.#topic = topic;
    this.#handler = handler;
    this.#stream = info.config.name;
    this.#epoch = streamEpoch(info.created);
    this.#seq = info.state.last_seq;
  }

  /**
   * Opens an ordered consumer after the last message handed on, on the
   * stream of the current epoch; resolves once it exists on the server.
   */
  async open(): Promise<void> {
    const { js, jsm } = await this.#history.clients(`follow ${this.#topic}`);
    for (;;) {
      // A follower never makes its stream again: it learns that the stream is gone while the
      // deletion is still under way (its consumer is deleted first), and a stream made at that
      // moment loses its files to the deletion (nats-server 2.9). A publish or a read makes it.
      this.#adopt(await this.#history.streamInfo(this.#topic, this.#stream, false));
      const consumer = await js.consumers.get(this.#stream, { opt_start_seq: this.#seq + 1 });
      const { name } = await consumer.info(true);
      // Made again between the two reads, the stream would give this consumer's messages
      // a stale epoch: check once more, and start over on a change.
      const after = await this.#history.streamInfo(this.#topic, this.#stream, false);
      if (!this.#active || streamEpoch(after.created) !== this.#epoch) {
        jsm.consumers.delete(this.#stream, name).catch(() => undefined);
        if (!this.#active) return;
        continue;
      }
      this.#consumer = name;
      const messages = await consumer.consume({
        expires: FOLLOW_EXPIRES_MS,
        callback: (msg) => this.#receive(messages, msg),
      });
      this.#messages = messages;
      this.#watch(messages);
      if (!this.#active) await messages.close();
      return;
    }
  }

  /** Opens a fresh consumer (checking the epoch) when `topic` is this follower's: its stream was made again. */
  recheck(topic: string): void {
    if (topic !== this.#topic || !this.#active) return;
    if (this.#messages) {
      this.#replace(this.#messages);
    } else if (this.#retry) {
      // Waiting for the stream to come back: it is back, no need to wait for the timer.
      clearTimeout(this.#timer);
      this.#retry();
    }
  }

  /** Stops delivery and the consumer; idempotent. */
  stop(): void {
    this.#active = false;
    clearTimeout(this.#timer);
    const messages = this.#messages;
    this.#messages = undefined;
    messages?.close().catch(() => undefined);
  }

  /** Takes the stream's epoch; a new one means a new stream, read from its start. */
  #adopt(info: StreamInfo): void {
    const epoch = streamEpoch(info.created);
    if (epoch === this.#epoch && info.config.name === this.#stream) return;
    this.#stream = info.config.name;
    this.#epoch = epoch;
    this.#seq = 0;
  }

  #receive(from: ConsumerMessages, msg: JsMsg): void {
    if (!this.#active || from !== this.#messages) return;
    if (msg.info.consumer !== this.#consumer) {
      // The driver recreated the consumer (see the class comment): not handed on, read again.
      this.#replace(from);
      return;
    }
    // After a restart from an older sequence, what was handed on already is not handed on twice.
    if (msg.seq <= this.#seq) return;
    if (this.#seq > 0 && msg.seq > this.#seq + 1) {
      // The consumer starts after the last sequence handed on: a jump means those events
      // were trimmed (or deleted) before this follower read them. Say so, not to lose them silently.
      this.#history.report(
        new PubSubError(
          `NatsPubSub: follow ${this.#topic}: events ${this.#seq + 1}–${msg.seq - 1} were gone before this follower read them (raise history.maxEvents)`,
          'PUSH_HISTORY_GAP',
        ),
      );
    }
    this.#seq = msg.seq;
    // A wider stream (the one of a topic above) also holds subjects that are not this topic's.
    if (!isUnder(msg.subject, this.#topic)) return;
    try {
      this.#handler(msg.data, msg.subject, `${this.#epoch}:${msg.seq}`);
    } catch (error) {
      this.#history.report(error);
    }
  }

  /** Replaces the consumer when the driver recreated it, lost its stream, or stopped. */
  #watch(messages: ConsumerMessages): void {
    const stream = this.#stream;
    void (async () => {
      for await (const status of messages.status()) {
        if (messages !== this.#messages) break;
        switch (status.type) {
          case 'ordered_consumer_recreated':
            this.#replace(messages);
            void this.#history
              .clients(`follow ${this.#topic}`)
              .then(({ jsm }) => jsm.consumers.delete(stream, status.name))
              .catch(() => undefined);
            break;
          case 'stream_not_found':
          case 'consumer_deleted':
            // The driver would wait for the stream forever; open() makes it again.
            this.#replace(messages);
            break;
          default:
            break;
        }
      }
    })().catch(() => undefined);
    messages
      .closed()
      .then((why) => {
        if (!this.#active || messages !== this.#messages) return;
        if (why instanceof Error) this.#history.report(why);
        this.#replace(messages);
      })
      .catch(() => undefined);
  }

  /** Closes `old` (when it is still the current one) and opens a consumer after the last message handed on. */
  #replace(old: ConsumerMessages): void {
    if (!this.#active || this.#messages !== old) return;
    this.#messages = undefined;
    old.close().catch(() => undefined);
    const attempt = (): void => {
      this.#retry = undefined;
      if (!this.#active || this.#messages !== undefined) return;
      this.open().then(
        () => {
          this.#reopenDelay = REOPEN_MIN_MS;
        },
        (error: unknown) => {
          // A stream that is gone is waited for quietly: it comes back with the next publish.
          if (!(error instanceof PubSubError && error.code === NO_STREAM)) {
            this.#history.report(error);
          }
          this.#retry = attempt;
          this.#timer = setTimeout(attempt, this.#reopenDelay);
          this.#reopenDelay = Math.min(this.#reopenDelay * 2, REOPEN_MAX_MS);
        },
      );
    };
    attempt();
  }
}
