import { NotConnectedError } from '../errors.js';
import {
  subjectMatches,
  type PubSubClient,
  type PubSubHandler,
  type PubSubStatus,
  type Unsubscribe,
} from './contract.js';

interface Subscription {
  subject: string;
  handler: PubSubHandler;
  active: boolean;
}

/** Options of {@link LocalPubSub}. */
export interface LocalPubSubOptions {
  /** Called when a subscription handler throws; the default ignores it (the server's handlers never throw). */
  onError?: (error: unknown) => void;
}

/**
 * The in-memory backend, for one process: the default and the reference
 * implementation of {@link PubSubClient}. Several push middlewares (or tests
 * simulating several servers) can share one instance like a broker.
 *
 * Delivery is asynchronous (a microtask after `publish`), as with a real
 * broker, so a handler never runs inside the publisher's call stack, and
 * payloads published in one turn reach a handler in that order.
 */
export class LocalPubSub implements PubSubClient {
  #subs: Subscription[] = [];
  #status: PubSubStatus = 'disconnected';
  #listeners = new Set<(status: PubSubStatus) => void>();
  #queue: Array<{ subject: string; payload: Uint8Array }> = [];
  #flushScheduled = false;
  readonly #onError: (error: unknown) => void;

  constructor(options: LocalPubSubOptions = {}) {
    this.#onError = options.onError ?? (() => undefined);
  }

  /** The current connection state. */
  get status(): PubSubStatus {
    return this.#status;
  }

  /** Marks the bus connected; idempotent. */
  async connect(): Promise<void> {
    if (this.#status !== 'connected') this.#setStatus('connected');
  }

  /** Drops every subscription and marks the bus closed; idempotent. */
  async disconnect(): Promise<void> {
    for (const sub of this.#subs) sub.active = false;
    this.#subs = [];
    this.#queue = [];
    if (this.#status !== 'closed') this.#setStatus('closed');
  }

  /** Queues `payload` for every matching subscription; rejects when not connected. */
  async publish(subject: string, payload: Uint8Array): Promise<void> {
    if (this.#status !== 'connected') {
      throw new NotConnectedError('LocalPubSub: publish before connect() (or after disconnect())');
    }
    this.#queue.push({ subject, payload });
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(() => this.#flush());
    }
  }

  /** Subscribes `handler` to `subject` (`>` as the last token matches every subject below). */
  async subscribe(subject: string, handler: PubSubHandler): Promise<Unsubscribe> {
    const sub: Subscription = { subject, handler, active: true };
    this.#subs.push(sub);
    return async () => {
      if (!sub.active) return;
      sub.active = false;
      this.#subs = this.#subs.filter((s) => s !== sub);
    };
  }

  /** Adds a connection-state listener; returns its remover. */
  onStatus(listener: (status: PubSubStatus) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #flush(): void {
    this.#flushScheduled = false;
    const queue = this.#queue;
    this.#queue = [];
    for (const { subject, payload } of queue) {
      // A snapshot: a handler that subscribes or unsubscribes does not change this delivery.
      for (const sub of this.#subs.slice()) {
        if (!sub.active || !subjectMatches(sub.subject, subject)) continue;
        try {
          sub.handler(payload, subject);
        } catch (error) {
          this.#onError(error);
        }
      }
    }
  }

  #setStatus(status: PubSubStatus): void {
    this.#status = status;
    for (const listener of this.#listeners) listener(status);
  }
}
