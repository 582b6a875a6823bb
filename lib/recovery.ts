/**
 * Recovery (docs/PROTOCOL.md, "Recovery"): a session that gives the
 * position of the last event it received (`since`) is sent, before any
 * live event, every event after it that it would have received live —
 * through the same dispatch chain, push config and predicates — then one
 * recovery control frame, then live events with no gap and no duplicate.
 *
 * How the seam holds: the server's live events come out of the same
 * history it replays from (subscription.ts follows it), in position order.
 * From the moment a replay starts, the fan-out hands the session's live
 * batches to its resume instead of writing them; once the history has been
 * read to its end, what was held is written, minus what the replay already
 * sent (positions at or before the last one read).
 */
import type { DispatchPredicate } from './chain.js';
import type { BatchedEvent, FanOut } from './fan-out.js';
import { controlFrame, EventFrames } from './event-frames.js';
import { describeError } from './logger.js';
import type { ResolvedOptions } from './options.js';
import type { WireEvent } from './protocol/event.js';
import type { TopicHistory } from './pubsub/contract.js';
import type { ResumeHold, ServerSession } from './session.js';
import type { PushStats } from './stats.js';
import type { TopicSubscription } from './subscription.js';

/** Events read from the history per read: bounds the memory one replay holds at a time. */
const REPLAY_PAGE = 256;
/** How long a replay waits for a client's buffer to drain before looking again. */
const DRAIN_WAIT_MS = 1000;
/** The close code of a session whose live events overflowed while it replayed (RFC 6455: try again later). */
const TRY_AGAIN_LATER = 1013;

/** The recovery control frame's content. */
export interface RecoveryReport {
  /** True when every event after `since` was replayed; false: the client must re-read state. */
  recovered: boolean;
  /** The position the session is at now: the next `since`. */
  position: string;
}

/** How long a session that asked for a replay in its URL waits for its first push config. */
const CONFIG_WAIT_MS = 2000;

/** The live events held for one session while it replays. */
class Resume implements ResumeHold {
  held: BatchedEvent[] = [];
  overflowed = false;
  /** Set while the replay waits for the session's first push config (a `since` in the URL). */
  waiting: { since: string; timer: NodeJS.Timeout } | undefined;
  constructor(private readonly limit: number) {}

  hold(batch: readonly object[]): void {
    if (this.overflowed) return;
    for (const item of batch) this.held.push(item as BatchedEvent);
    if (this.held.length > this.limit) {
      this.overflowed = true;
      this.held = [];
    }
  }
}

/** What recovery is built from. */
export interface RecoveryInit {
  history: TopicHistory;
  stats: PushStats;
  topic: string;
  options: ResolvedOptions;
  subscription: TopicSubscription;
  fanOut: FanOut;
}

/** Replays a topic's history to resuming sessions of one server. */
export class Recovery {
  readonly #history: TopicHistory;
  readonly #topic: string;
  readonly #options: ResolvedOptions;
  readonly #subscription: TopicSubscription;
  readonly #fanOut: FanOut;
  readonly #stats: PushStats;
  /** Replays running, so that shutdown can wait for them. */
  readonly #running = new Set<Promise<void>>();

  constructor(init: RecoveryInit) {
    this.#history = init.history;
    this.#topic = init.topic;
    this.#options = init.options;
    this.#subscription = init.subscription;
    this.#fanOut = init.fanOut;
    this.#stats = init.stats;
  }

  /**
   * Starts the replay of everything after `since` to `session`; its live
   * events are held from now on until the replay is done. A session that
   * already received events cannot be replayed to in order: it is told
   * `recovered: false` at once, with the newest position this server saw.
   */
  begin(session: ServerSession, since: string): void {
    const current = session.resume;
    if (current instanceof Resume && current.waiting !== undefined) {
      // The session's first config, after a `since` in its URL: the replay uses this config.
      clearTimeout(current.waiting.timer);
      current.waiting = undefined;
      this.#start(session, current, since);
      return;
    }
    if (current !== undefined) return;
    if (session.received) {
      this.#report(session, {
        recovered: false,
        position: this.#subscription.lastPosition ?? since,
      });
      return;
    }
    // Held live events are bounded by the history's own bound: a session further behind than
    // that could not have been recovered from the history either.
    const resume = new Resume(Math.max(REPLAY_PAGE, this.#history.options.maxEvents));
    session.resume = resume;
    this.#start(session, resume, since);
  }

  /**
   * A session whose URL carries `since`: its live events are held from its
   * registration, before any can be written, and its replay starts with its
   * first push config (whose filters it then follows), or after
   * CONFIG_WAIT_MS without one (a client that sends no config wants every
   * event). This is the race-free way to resume: with `since` only in the
   * config, events published between the handshake and the config's
   * arrival would already have been written live.
   */
  hold(session: ServerSession, since: string): void {
    const resume = new Resume(Math.max(REPLAY_PAGE, this.#history.options.maxEvents));
    const timer = setTimeout(() => {
      // Timers run before I/O: after a stall of the event loop (a reconnect storm), a config that
      // arrived in time may still be unread in the socket's buffer. Decide after this turn's
      // reads; begin() has started the replay with the config if it was there.
      setImmediate(() => {
        if (resume.waiting?.timer !== timer) return;
        resume.waiting = undefined;
        this.#start(session, resume, since);
      });
    }, CONFIG_WAIT_MS);
    timer.unref();
    resume.waiting = { since, timer };
    session.resume = resume;
  }

  /** The `since` a held session is waiting to replay from, if any. */
  waitingSince(session: ServerSession): string | undefined {
    const resume = session.resume;
    return resume instanceof Resume ? resume.waiting?.since : undefined;
  }

  #start(session: ServerSession, resume: Resume, since: string): void {
    const run = this.#replay(session, resume, since)
      .catch((error: unknown) => {
        // Nothing in a replay is meant to throw; should something, the session must not stay
        // held (it would get no live event again) and the process must not see a rejection.
        session.resume = undefined;
        this.#options.logger.error(
          { sessionId: session.id, err: describeError(error) },
          'pushwire: replay failed unexpectedly',
        );
      })
      .finally(() => {
        this.#running.delete(run);
      });
    this.#running.add(run);
  }

  /** Resolves once every replay running now has ended. */
  idle(): Promise<void> {
    return Promise.all(this.#running).then(() => undefined);
  }

  async #replay(session: ServerSession, resume: Resume, since: string): Promise<void> {
    let report: RecoveryReport;
    let last = since;
    try {
      report = await this.#replayHistory(session, since, (position) => {
        last = position;
      });
    } catch (error) {
      // The broker went away mid-replay: what was sent stays sent; the client re-reads state.
      this.#options.logger.warn(
        { sessionId: session.id, err: describeError(error) },
        'pushwire: replay failed; the session is told it did not recover',
      );
      report = { recovered: false, position: last };
    }
    if (resume.overflowed) {
      session.resume = undefined;
      session.policyClose = { code: TRY_AGAIN_LATER, reason: 'too far behind to recover' };
      session.transport?.close(session.policyClose.code, session.policyClose.reason);
      return;
    }
    if (!session.open) {
      session.resume = undefined;
      return;
    }
    this.#report(session, report);
    await this.#releaseHeld(session, resume, report.position);
  }

  /** Reads the history after `since` to its end, writing what passes; returns the report. */
  async #replayHistory(
    session: ServerSession,
    since: string,
    advanced: (position: string) => void,
  ): Promise<RecoveryReport> {
    let cursor = since;
    for (;;) {
      const read = await this.#history.read(this.#topic, cursor, REPLAY_PAGE);
      if (!read.recovered) return { recovered: false, position: read.head };
      for (const entry of read.entries) {
        if (!session.open) return { recovered: false, position: cursor };
        const publication = this.#subscription.decode(entry.payload, entry.position);
        cursor = entry.position;
        advanced(cursor);
        if (publication === undefined) continue;
        const ctx = await this.#subscription.dispatchReplay(publication, session);
        if (ctx === undefined) continue;
        if (
          await this.#deliver(session, publication.event, ctx.relatedIdentities, ctx.predicates)
        ) {
          this.#stats.eventsReplayed++;
        }
      }
      if (!read.more) return { recovered: true, position: cursor };
    }
  }

  /**
   * Writes the live events held during the replay that come after `position`,
   * until none is left; then the session is live again. The last check for
   * held events and the end of the resume happen in one synchronous step, so
   * no batch falls between them.
   */
  async #releaseHeld(session: ServerSession, resume: Resume, position: string): Promise<void> {
    let last = position;
    // Live events still waiting for their fan-out reach the held list first.
    this.#fanOut.flush();
    while (resume.held.length > 0 && session.open) {
      const held = resume.held;
      resume.held = [];
      for (const item of held) {
        const at = item.event.position;
        // The seam: what the replay already sent is at or before `last`.
        if (at !== undefined && !(this.#history.compare(at, last) > 0)) continue;
        if (at !== undefined) last = at;
        await this.#deliver(session, item.event, item.related, item.predicates, item.frames);
      }
      this.#fanOut.flush();
    }
    // A read sees the history's tail at once, while live delivery (a follower) can be behind
    // it: a live copy of a replayed event may still come. The fan-out drops, for this session,
    // live events at or before `last` until one after it passes (fan-out.ts, #passFloor).
    session.floor = last;
    session.resume = undefined;
  }

  /** Writes one event to the session when its verdict passes, waiting for the client to read. */
  async #deliver(
    session: ServerSession,
    event: WireEvent,
    related: readonly string[],
    predicates: readonly DispatchPredicate[],
    frames?: EventFrames,
  ): Promise<boolean> {
    let verdict = this.#fanOut.verdictFor(session, event, related, predicates);
    if (verdict !== true && verdict !== false) verdict = await verdict;
    if (!verdict) return false;
    const transport = session.transport;
    if (transport === undefined) return false;
    // A replay is read as fast as the history gives it: pace it by the client, so that the
    // slow-consumer bound (which drops live events) is never what stops a recovery.
    const bound = this.#options.maxBufferedBytes / 2;
    while (transport.writable && transport.bufferedBytes > bound) {
      await transport.drain(DRAIN_WAIT_MS);
    }
    const frame = (frames ?? new EventFrames(event)).for(session.format);
    if (frame === undefined) return false;
    this.#fanOut.write(session, frame, undefined);
    return true;
  }

  #report(session: ServerSession, report: RecoveryReport): void {
    this.#stats.recoveries++;
    if (!report.recovered) this.#stats.recoveriesFailed++;
    this.#options.logger.debug(
      { sessionId: session.id, recovered: report.recovered, position: report.position },
      'pushwire: recovery',
    );
    const frame = controlFrame('recovery', { ...report }, session.format, report.position);
    this.#fanOut.write(session, frame, undefined);
  }
}
