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
import type { DecodedPublication } from './protocol/publication.js';
import type { HistoryRead, TopicHistory } from './pubsub/contract.js';
import { splitPosition } from './pubsub/history-common.js';
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

/**
 * Most payload bytes the pages shared between replays keep (see Recovery#page); a page larger
 * than this is read for its replays and not kept.
 */
const SHARED_PAGE_BYTES = 16 * 1024 * 1024;
/** How long a page read stays shareable after it arrived: the length of a reconnect wave. */
const SHARED_PAGE_MS = 5000;

/** One event of a page: decoded once, its frames encoded once, for every replay that reads it. */
interface PageItem {
  readonly position: string;
  /** Undefined when the publication does not decode (counted and logged once). */
  readonly publication: DecodedPublication | undefined;
  readonly frames: EventFrames | undefined;
}

/** A history read, decoded, shared by the replays that read from the same position. */
interface ReplayPage {
  readonly recovered: boolean;
  readonly head: string;
  readonly more: boolean;
  readonly items: readonly PageItem[];
}

/** A page being read or kept: who may use it. */
interface SharedPage {
  /** Recovery's clock when the read started: replays whose hold began before may use it. */
  readonly started: number;
  readonly page: Promise<ReplayPage>;
  /** Known once read: a full page (`more`) is good for any replay, whenever it began. */
  more: boolean;
  /** Known once read: the history's newest position when it was read. */
  head: string | undefined;
  bytes: number;
  /** True once its bytes count in the pages kept. */
  counted: boolean;
}

/** How long a session that asked for a replay in its URL waits for its first push config. */
const CONFIG_WAIT_MS = 2000;

/** The live events held for one session while it replays. */
class Resume implements ResumeHold {
  held: BatchedEvent[] = [];
  overflowed = false;
  /** Set while the replay waits for the session's first push config (a `since` in the URL). */
  waiting: { since: string; timer: NodeJS.Timeout } | undefined;
  /**
   * @param limit the most live events held
   * @param mark Recovery's clock when holding began: live events from then on are held, so a
   *   page read that started later misses nothing the held events do not have
   * @param liveAt the newest position this server had received live when holding began: every
   *   later event is held, so a page read up to it (or past it) misses nothing either
   */
  constructor(
    private readonly limit: number,
    readonly mark: number,
    readonly liveAt: string | undefined,
  ) {}

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
  /** Pages shared between replays, by the position they were read after (oldest first). */
  readonly #pages = new Map<string, SharedPage>();
  #pageBytes = 0;
  /** Orders holds and reads: a page is safe for a replay whose hold began before its read. */
  #clock = 0;

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
    const resume = this.#newResume();
    session.resume = resume;
    this.#start(session, resume, since);
  }

  #newResume(): Resume {
    return new Resume(
      Math.max(REPLAY_PAGE, this.#history.options.maxEvents),
      ++this.#clock,
      this.#subscription.lastPosition,
    );
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
    const resume = this.#newResume();
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
      report = await this.#replayHistory(session, resume, since, (position) => {
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
    resume: Resume,
    since: string,
    advanced: (position: string) => void,
  ): Promise<RecoveryReport> {
    let cursor = since;
    for (;;) {
      const page = await this.#page(cursor, resume);
      if (!page.recovered) return { recovered: false, position: page.head };
      for (const item of page.items) {
        if (!session.open) return { recovered: false, position: cursor };
        cursor = item.position;
        advanced(cursor);
        const publication = item.publication;
        if (publication === undefined) continue;
        const ctx = await this.#subscription.dispatchReplay(publication, session);
        if (ctx === undefined) continue;
        if (
          await this.#deliver(
            session,
            publication.event,
            ctx.relatedIdentities,
            ctx.predicates,
            item.frames,
          )
        ) {
          this.#stats.eventsReplayed++;
        }
      }
      if (!page.more) return { recovered: true, position: cursor };
    }
  }

  /**
   * The page of history after `cursor` for a replay held by `resume`. In a reconnect storm thousands of sessions resume from the same
   * few positions (the last events before the server went away): one read
   * and one decode serve them all, instead of a broker round trip each,
   * which made the replays the long tail of a storm. Sharing is safe for a
   * replay whose live events were held before the read started or whose
   * read reached the newest event the server had live when the hold began
   * (whatever the page lacks is held for it), and for any full page (the
   * replay reads on from its end); otherwise a new read is made, for it and
   * the sessions held before it.
   */
  #page(cursor: string, resume: Resume): Promise<ReplayPage> {
    const shared = this.#pages.get(cursor);
    if (
      shared !== undefined &&
      (shared.started > resume.mark ||
        shared.more ||
        (shared.head !== undefined && this.#reaches(shared.head, resume.liveAt)))
    ) {
      return shared.page;
    }
    const entry: SharedPage = {
      started: ++this.#clock,
      more: false,
      head: undefined,
      bytes: 0,
      counted: false,
      page: this.#history
        .read(this.#topic, cursor, REPLAY_PAGE)
        .then((read) => this.#decodePage(read, entry)),
    };
    this.#forgetPage(cursor);
    this.#pages.set(cursor, entry);
    entry.page.then(
      () => {
        if (this.#pages.get(cursor) !== entry) return;
        entry.counted = true;
        this.#pageBytes += entry.bytes;
        while (this.#pageBytes > SHARED_PAGE_BYTES && this.#pages.size > 0) {
          this.#forgetPage(this.#pages.keys().next().value as string);
        }
        setTimeout(() => {
          if (this.#pages.get(cursor) === entry) this.#forgetPage(cursor);
        }, SHARED_PAGE_MS).unref();
      },
      () => {
        // A failed read is not shared with replays that come later: they read again.
        if (this.#pages.get(cursor) === entry) this.#pages.delete(cursor);
      },
    );
    return entry.page;
  }

  /** True when `head` is at or after `liveAt`, both positions of one epoch. */
  #reaches(head: string, liveAt: string | undefined): boolean {
    if (liveAt === undefined) return false;
    const a = splitPosition(head);
    const b = splitPosition(liveAt);
    if (a === undefined || b === undefined || a.epoch !== b.epoch) return false;
    return this.#history.compare(head, liveAt) >= 0;
  }

  #decodePage(read: HistoryRead, entry: SharedPage): ReplayPage {
    entry.more = read.more;
    entry.head = read.head;
    const items = read.entries.map((stored): PageItem => {
      entry.bytes += stored.payload.byteLength;
      const publication = this.#subscription.decode(stored.payload, stored.position);
      return {
        position: stored.position,
        publication,
        frames: publication === undefined ? undefined : new EventFrames(publication.event),
      };
    });
    return { recovered: read.recovered, head: read.head, more: read.more, items };
  }

  #forgetPage(cursor: string): void {
    const entry = this.#pages.get(cursor);
    if (entry === undefined) return;
    this.#pages.delete(cursor);
    if (entry.counted) this.#pageBytes -= entry.bytes;
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
