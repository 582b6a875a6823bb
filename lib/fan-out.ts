/**
 * The batched fan-out: the hot loop of the server. Events received in one
 * turn of the event loop (a broker hands several over in one read) wait in
 * a batch until the next tick; then one walk over the sessions checks each
 * session against all of them (PROTOCOL.md section 5, steps 1-5) and writes
 * what passes — as one buffer of frames per format when every event passes,
 * which is the common case. One walk per event cost a pass over every
 * session's state per event (the CPU profile of issue 7's benchmark).
 *
 * The loop reads plain fields of ServerSession and calls small functions
 * (#decide, the predicates) that V8 inlines; keep it that way: a closure or
 * a megamorphic call per (session, event) shows in the benchmark.
 */
import type { DispatchPredicate, DispatchStats } from './chain.js';
import { BatchFrames, EventFrames } from './event-frames.js';
import { describeError } from './logger.js';
import type { ResolvedOptions } from './options.js';
import type { WireEvent } from './protocol/event.js';
import { VERDICT_MEMO_SLOTS, type ConfigSelector } from './protocol/push-config.js';
import type { ServerSession } from './session.js';
import type { PushStats } from './stats.js';
import type { SessionTransport } from './transport/contract.js';

/**
 * The most events fanned out in one walk over the sessions: bounds the
 * combined frame a session gets in one write and stays within the verdict
 * memo of push-config selectors.
 */
const MAX_BATCH = VERDICT_MEMO_SLOTS;

/** What #admit decided for a write. */
const Admission = { Admitted: 0, Closed: 1, Dropped: 2 } as const;
type Admission = (typeof Admission)[keyof typeof Admission];

/** An event waiting in the batch of this turn for its fan-out. */
export interface BatchedEvent {
  event: WireEvent;
  /** The event's timestamp in ms (compared with each session's start). */
  ms: number;
  frames: EventFrames;
  related: readonly string[];
  predicates: readonly DispatchPredicate[];
  stats: DispatchStats | undefined;
  /** performance.now() at receipt, for onDispatch when no plugin reports it; -1: nobody listens. */
  receivedAt: number;
  /** The dispatch chain's `next()` resolving: called with what is still pending (async predicates). */
  done: ((fanOut: Promise<void> | undefined) => void) | undefined;
  /** Deferred writes behind async verdicts. */
  pending: Promise<void>[] | undefined;
}

/** The fan-out of one push server to its sessions. */
export class FanOut {
  readonly #sessions: ReadonlySet<ServerSession>;
  readonly #stats: PushStats;
  readonly #options: ResolvedOptions;
  readonly #report: (receivedAt: number, stats: DispatchStats) => void;
  /** Writes waiting for async verdicts, one promise per event (see #awaitWrites). */
  readonly #deferredWrites = new Set<Promise<void>>();
  /** The events of this turn, fanned out together at the next tick. */
  #batch: BatchedEvent[] = [];
  /** Scratch for #fanOut: which events of the batch pass for the session at hand. */
  readonly #passed: boolean[] = new Array<boolean>(MAX_BATCH).fill(false);
  /** Set by #decide when a predicate answered with a promise: where, and the promise. */
  #asyncAt = -1;
  #asyncVerdict: Promise<boolean> | undefined;
  /** Scratch for #fanOut: which events of the batch pass step 3 for one push-config selector. */
  readonly #configPassed: boolean[] = new Array<boolean>(MAX_BATCH).fill(false);
  #corked: ServerSession[] = [];
  /** With history on, the history's order of positions (for sessions just resumed: #passFloor). */
  comparePositions: ((a: string, b: string) => number) | undefined;
  #uncorkScheduled = false;

  /**
   * `report` is called with each event's receipt time and counters once
   * its fan-out ended, for events whose `receivedAt` is set and that have
   * no `done` (the dispatch chain reports those itself).
   */
  constructor(
    sessions: ReadonlySet<ServerSession>,
    stats: PushStats,
    options: ResolvedOptions,
    report: (receivedAt: number, stats: DispatchStats) => void,
  ) {
    this.#sessions = sessions;
    this.#stats = stats;
    this.#options = options;
    this.#report = report;
  }

  /** Resolves once every write deferred behind an async verdict so far is done (shutdown waits for it). */
  deferredWrites(): Promise<void> {
    return Promise.all(this.#deferredWrites).then(() => undefined);
  }

  /** Adds an event to this turn's batch. `done` is called once its fan-out ended. */
  enqueue(
    event: WireEvent,
    related: readonly string[],
    predicates: readonly DispatchPredicate[],
    stats: DispatchStats | undefined,
    receivedAt: number,
    done: ((fanOut: Promise<void> | undefined) => void) | undefined,
  ): void {
    const length = this.#batch.push({
      event,
      ms: event.timestamp.getTime(),
      frames: new EventFrames(event),
      related,
      predicates,
      stats,
      receivedAt,
      done,
      pending: undefined,
    });
    if (length === 1) process.nextTick(this.flush);
    // A long burst is fanned out in slices: a bounded combined frame, and verdict memos
    // (VERDICT_MEMO_SLOTS) that hold every event of a batch.
    else if (length >= MAX_BATCH) this.flush();
  }

  /** Fans out the events waiting in the batch, in order. Called at the next tick, or before a direct write. */
  readonly flush = (): void => {
    const batch = this.#batch;
    if (batch.length === 0) return;
    this.#batch = [];
    this.#fanOut(batch);
    for (const item of batch) {
      if (item.frames.failed) {
        this.#stats.eventsUndecodable++;
        this.#options.logger.warn(
          { identity: item.event.identity, type: item.event.type },
          'pushwire: dropped an event whose entity does not decode',
        );
      }
      const fanOut = item.pending === undefined ? undefined : this.#awaitWrites(item.pending);
      if (item.done !== undefined) item.done(fanOut);
      else if (item.receivedAt >= 0 && item.stats !== undefined) {
        this.#report(item.receivedAt, item.stats);
      }
    }
  };

  /**
   * The writes deferred behind async verdicts for one event, kept in
   * #deferredWrites until done: close() waits for them, since such an event
   * may be on no dispatch queue (its chain reached next() at once).
   */
  #awaitWrites(pending: Promise<void>[]): Promise<void> {
    const all = Promise.all(pending).then(() => undefined);
    const forget = (): void => {
      this.#deferredWrites.delete(all);
    };
    this.#deferredWrites.add(all);
    all.then(forget, forget);
    return all;
  }

  /** Steps 1-5 of PROTOCOL.md section 5, for every open session and every event of a batch. */
  #fanOut(batch: BatchedEvent[]): void {
    const count = batch.length;
    // Every open session is considered; the set does not change during the loop.
    const considered = this.#sessions.size;
    let plain = true;
    let counted = false;
    let oldest = Infinity;
    for (const item of batch) {
      if (item.stats !== undefined) {
        item.stats.considered += considered;
        counted = true;
      }
      if (item.predicates.length > 0) plain = false;
      if (item.ms < oldest) oldest = item.ms;
    }
    const combined = count > 1 ? new BatchFrames(batch) : undefined;
    const passed = this.#passed;
    // Step 3's verdicts depend on the config's selector and the event only, and sessions with
    // equal configs share one (#selectors): work them out once per selector for the batch.
    const configPassed = this.#configPassed;
    let configSelector: ConfigSelector | undefined;
    let configPassing = 0;
    let filtered = 0;
    for (const session of this.#sessions) {
      if (session.errorState) {
        filtered += count;
        if (counted) for (const item of batch) if (item.stats !== undefined) item.stats.filtered++;
        continue;
      }
      if (session.resume !== undefined) {
        // Replaying history: live events wait until the replay is done (recovery.ts), so they
        // follow the replayed ones in order; the seam drops those already replayed.
        session.resume.hold(batch);
        continue;
      }
      if (session.floor !== undefined) {
        const from = this.#passFloor(session, batch);
        if (from < 0) continue;
        if (from > 0) {
          filtered += this.#fanOutToSession(session, batch, from);
          continue;
        }
      }
      if (session.asyncTail !== undefined) {
        // An async verdict is pending for this session: its events queue behind it.
        filtered += this.#fanOutToSession(session, batch, 0);
        continue;
      }
      const config = session.config;
      let mask: boolean[] | undefined;
      let passing = count;
      if (config !== undefined) {
        const selector = config.selector;
        if (selector !== configSelector) {
          configSelector = selector;
          configPassing = 0;
          for (let i = 0; i < count; i++) {
            const item = batch[i] as BatchedEvent;
            const ok = selector.allows(item.event, item.related);
            configPassed[i] = ok;
            if (ok) configPassing++;
          }
        }
        mask = configPassed;
        passing = configPassing;
      }
      const startMs = session.startMs;
      let asyncAt = -1;
      if (!plain || oldest < startMs) {
        passing = this.#decide(session, batch, mask);
        mask = passed;
        asyncAt = this.#asyncAt;
      }
      const stop = asyncAt >= 0 ? asyncAt : count;
      if (passing < stop) {
        filtered += stop - passing;
        if (counted) {
          for (let i = 0; i < stop; i++) {
            const stats = (batch[i] as BatchedEvent).stats;
            if (stats !== undefined && !(mask as boolean[])[i]) stats.filtered++;
          }
        }
      }
      if (asyncAt >= 0) {
        // Events before the async verdict go now; it and those after it wait for it, in order.
        this.#writeEach(session, batch, passed, asyncAt);
        const item = batch[asyncAt] as BatchedEvent;
        const verdict = this.#asyncVerdict as Promise<boolean>;
        this.#asyncVerdict = undefined;
        const deferred = this.#deferWrite(session, verdict, item.frames, item.stats);
        (item.pending ??= []).push(deferred);
        filtered += this.#fanOutToSession(session, batch, asyncAt + 1);
        continue;
      }
      if (passing === 0) continue;
      if (passing === count) {
        const frame =
          combined === undefined
            ? (batch[0] as BatchedEvent).frames.for(session.format)
            : combined.for(session.format);
        if (frame !== undefined && this.#writeBatch(session, frame, batch)) continue;
        // One of the events cannot be encoded for this session, or together they do not fit
        // within its bound: one frame each.
        this.#writeEach(session, batch, undefined, count);
        continue;
      }
      this.#writeEach(session, batch, mask, count);
    }
    this.#stats.filtered += filtered;
  }

  /**
   * Steps 2 (timestamps) and 4 (predicates) for one session and a batch,
   * on top of step 3's `mask`: fills #passed and returns how many pass. On
   * an async verdict it stops there, with #asyncAt and #asyncVerdict set.
   * A function of its own, and small, so that V8 inlines the predicates
   * into this loop: in #fanOut's body they were calls per (session, event).
   */
  #decide(
    session: ServerSession,
    batch: readonly BatchedEvent[],
    mask: readonly boolean[] | undefined,
  ): number {
    const passed = this.#passed;
    const startMs = session.startMs;
    let passing = 0;
    this.#asyncAt = -1;
    for (let i = 0; i < batch.length; i++) {
      const item = batch[i] as BatchedEvent;
      let ok = item.ms >= startMs && (mask === undefined || (mask[i] as boolean));
      const predicates = item.predicates;
      if (ok && predicates.length !== 0) {
        let verdict: boolean | Promise<boolean>;
        if (predicates.length === 1) {
          try {
            verdict = (predicates[0] as DispatchPredicate)(session);
          } catch (error) {
            this.#predicateFailed(session, error);
            verdict = false;
          }
          if (verdict !== true && verdict !== false) verdict = this.#settle(session, verdict);
        } else {
          verdict = this.#checkPredicates(session, predicates);
        }
        if (verdict !== true && verdict !== false) {
          this.#asyncAt = i;
          this.#asyncVerdict = verdict;
          return passing;
        }
        ok = verdict;
      }
      passed[i] = ok;
      if (ok) passing++;
    }
    return passing;
  }

  /** A predicate's answer that is neither true nor false: a promise of one, or false. */
  #settle(session: ServerSession, result: unknown): boolean | Promise<boolean> {
    if (typeof (result as { then?: unknown } | null)?.then !== 'function') return false;
    return Promise.resolve(result as Promise<boolean>).then(
      (r) => r === true,
      (error: unknown) => {
        this.#predicateFailed(session, error);
        return false;
      },
    );
  }

  /** Writes, one frame each, the events before `end` that pass by `mask` (undefined: all). */
  #writeEach(
    session: ServerSession,
    batch: readonly BatchedEvent[],
    mask: readonly boolean[] | undefined,
    end: number,
  ): void {
    for (let i = 0; i < end; i++) {
      if (mask !== undefined && !mask[i]) continue;
      const item = batch[i] as BatchedEvent;
      // Skip only this event: a `break` here made the sessions of the other encoding get the
      // event or not depending on the order sessions happened to connect in.
      const frame = item.frames.for(session.format);
      if (frame !== undefined) this.write(session, frame, item.stats);
    }
  }

  /**
   * The fan-out of a batch's events from `from` on to a session that has an
   * async verdict pending: each event that passes the synchronous checks
   * waits behind it. Returns how many events it filtered synchronously.
   */
  #fanOutToSession(session: ServerSession, batch: readonly BatchedEvent[], from: number): number {
    let filtered = 0;
    for (let i = from; i < batch.length; i++) {
      const item = batch[i] as BatchedEvent;
      let verdict: boolean | Promise<boolean> =
        item.ms >= session.startMs &&
        (session.config === undefined || session.config.allows(item.event, item.related));
      if (verdict && item.predicates.length > 0) {
        verdict = this.#checkPredicates(session, item.predicates);
      }
      if (verdict === false) {
        filtered++;
        if (item.stats !== undefined) item.stats.filtered++;
        continue;
      }
      (item.pending ??= []).push(this.#deferWrite(session, verdict, item.frames, item.stats));
    }
    return filtered;
  }

  #checkPredicates(
    session: ServerSession,
    predicates: readonly DispatchPredicate[],
  ): boolean | Promise<boolean> {
    let asyncResults: Promise<boolean>[] | undefined;
    for (let i = 0; i < predicates.length; i++) {
      let result: boolean | Promise<boolean>;
      try {
        result = (predicates[i] as DispatchPredicate)(session);
      } catch (error) {
        this.#predicateFailed(session, error);
        return false;
      }
      if (result === true) continue;
      if (result === false) return false;
      const settled = this.#settle(session, result);
      if (settled === false) return false;
      (asyncResults ??= []).push(settled as Promise<boolean>);
    }
    if (asyncResults === undefined) return true;
    return Promise.all(asyncResults).then((all) => all.every(Boolean));
  }

  #predicateFailed(session: ServerSession, error: unknown): void {
    this.#options.logger.warn(
      { sessionId: session.id, err: describeError(error) },
      'pushwire: shouldDispatch threw; the event is not sent to that session',
    );
  }

  #deferWrite(
    session: ServerSession,
    verdict: boolean | Promise<boolean>,
    frames: EventFrames,
    stats: DispatchStats | undefined,
  ): Promise<void> {
    const previous = session.asyncTail ?? Promise.resolve();
    const tail = previous
      .then(() => verdict)
      .then((ok) => {
        if (!ok) {
          this.#stats.filtered++;
          if (stats) stats.filtered++;
          return;
        }
        const frame = frames.for(session.format);
        if (frame !== undefined) this.write(session, frame, stats);
      })
      .finally(() => {
        if (session.asyncTail === tail) session.asyncTail = undefined;
      });
    session.asyncTail = tail;
    return tail;
  }

  /**
   * For a session whose replay just ended (recovery.ts): live delivery can
   * lag behind the history read, so live copies of replayed events may still
   * come. Returns -1 when every event of the batch is at or before the
   * session's floor (the session gets none), else the index of the first
   * one after it, from which the session is live again (floor cleared).
   */
  #passFloor(session: ServerSession, batch: readonly BatchedEvent[]): number {
    const floor = session.floor as string;
    const compare = this.comparePositions;
    for (let i = 0; i < batch.length; i++) {
      const at = (batch[i] as BatchedEvent).event.position;
      if (at === undefined || compare === undefined || compare(at, floor) > 0) {
        session.floor = undefined;
        return i;
      }
    }
    return -1;
  }

  /**
   * Steps 1, 3 and 4 for one session and one event, without step 2 (the
   * session's start): the verdict on an event replayed from history, or held
   * while a replay ran. True, false, or a promise of one.
   */
  verdictFor(
    session: ServerSession,
    event: WireEvent,
    related: readonly string[],
    predicates: readonly DispatchPredicate[],
  ): boolean | Promise<boolean> {
    if (session.errorState) return false;
    if (session.config !== undefined && !session.config.allows(event, related)) return false;
    return predicates.length === 0 ? true : this.#checkPredicates(session, predicates);
  }

  /** Writes one event's frame to a session, coalesced per turn, within its buffer bound. */
  write(session: ServerSession, frame: Buffer, stats: DispatchStats | undefined): void {
    const admitted = this.#admit(session, 1, true);
    if (admitted === Admission.Closed) return;
    if (admitted === Admission.Dropped) {
      if (stats) stats.dropped++;
      return;
    }
    (session.transport as SessionTransport).write(frame);
    this.#stats.deliveries++;
    session.received = true;
    if (stats) stats.sent++;
  }

  /**
   * Writes the frames of every event of a batch (concatenated) to a session,
   * as #write does. Returns false, having written nothing, when they would
   * take its buffer past the bound: then each is written (or dropped) alone,
   * so the bound holds to one frame as it does for single events.
   */
  #writeBatch(session: ServerSession, frames: Buffer, batch: readonly BatchedEvent[]): boolean {
    const transport = session.transport;
    const bound = this.#options.maxBufferedBytes;
    if (transport !== undefined && transport.bufferedBytes + frames.length > bound) {
      if (!session.corked) return false;
      // This turn's corked bytes are not the client's backlog (see #admit).
      transport.uncork();
      transport.cork();
      if (transport.bufferedBytes + frames.length > bound) return false;
    }
    // Not corked: this is the session's one write of the batch, corking would only cost a
    // buffered copy and an uncork. A later write this turn corks behind it, in order.
    const admitted = this.#admit(session, batch.length, false);
    if (admitted === Admission.Closed) return true;
    if (admitted === Admission.Dropped) {
      for (const item of batch) if (item.stats !== undefined) item.stats.dropped++;
      return true;
    }
    (session.transport as SessionTransport).write(frames);
    this.#stats.deliveries += batch.length;
    session.received = true;
    for (const item of batch) if (item.stats !== undefined) item.stats.sent++;
    return true;
  }

  /**
   * Whether `events` frames may be written to a session now: not when it is
   * closed, nor past its buffer bound (counted as dropped, with the slow
   * consumer policy applied). With `cork`, corks the socket until the next
   * tick, so that the writes of this turn leave in one system call.
   */
  #admit(session: ServerSession, events: number, cork: boolean): Admission {
    const transport = session.transport;
    if (transport === undefined || !transport.writable) return Admission.Closed;
    const bound = this.#options.maxBufferedBytes;
    if (session.corked && transport.bufferedBytes > bound) {
      // What is corked in this turn is not the client's backlog: hand it to the kernel before
      // measuring, or a burst larger than the bound is dropped even for a client reading at once.
      transport.uncork();
      transport.cork();
    }
    if (transport.bufferedBytes > bound) {
      session.dropped += events;
      this.#stats.dropped += events;
      if (this.#options.slowConsumerPolicy === 'close') this.#closeSlowConsumer(session);
      return Admission.Dropped;
    }
    if (cork && !session.corked) {
      session.corked = true;
      transport.cork();
      this.#corked.push(session);
      if (!this.#uncorkScheduled) {
        this.#uncorkScheduled = true;
        process.nextTick(this.uncorkAll);
      }
    }
    return Admission.Admitted;
  }

  /** Releases every socket corked this turn (at the next tick, and before shutdown). */
  readonly uncorkAll = (): void => {
    this.#uncorkScheduled = false;
    const corked = this.#corked;
    this.#corked = [];
    for (const session of corked) {
      session.corked = false;
      session.transport?.uncork();
    }
  };

  #closeSlowConsumer(session: ServerSession): void {
    const transport = session.transport;
    if (transport === undefined || !transport.writable) return;
    this.#options.logger.debug({ sessionId: session.id }, 'pushwire: closing a slow consumer');
    session.policyClose = { code: 1008, reason: 'slow consumer' };
    transport.closeForPolicy(session.policyClose.code, session.policyClose.reason);
  }
}
