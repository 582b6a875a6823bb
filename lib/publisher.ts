/**
 * Publishing: each event validated and encoded once (PROTOCOL.md sections
 * 3 and 8), run through the `publish` plugin chain, and handed to the
 * backend with retries (`publishRetries`, exponential delay).
 */
import { randomUUID } from 'node:crypto';
import type { PublishContext, PublishOptions } from './chain.js';
import {
  InvalidEventError,
  NotConnectedError,
  PubSubError,
  ServiceUnavailableError,
} from './errors.js';
import { describeError } from './logger.js';
import type { ResolvedOptions } from './options.js';
import {
  encodeEntity,
  encodeMsgpackEvent,
  EventFormatError,
  findProtoKey,
  mayHoldProtoKey,
  normalizeTimestamp,
  type PushEvent,
} from './protocol/event.js';
import {
  encodePublication,
  publicationSubject,
  type PublicationHeaders,
} from './protocol/publication.js';
import type { PubSubClient } from './pubsub/contract.js';
import type { PushStats } from './stats.js';
import { delay } from './timing.js';

/** The publish chain of the plugins, composed. */
export type PublishChain = (
  ctx: PublishContext,
  last: (ctx: PublishContext) => Promise<void>,
) => Promise<void>;

interface PreparedEvent {
  event: PushEvent & { timestamp: Date };
  eventBytes: Uint8Array;
  subject: string;
}

/** What the publisher is built from. */
export interface PublisherInit {
  pubsub: PubSubClient;
  topic: string;
  options: ResolvedOptions;
  stats: PushStats;
  publishChain: PublishChain | undefined;
}

/** Publishes one server's events to its topic. */
export class Publisher {
  /** True once the server is closing: publish() rejects with 503. */
  closing = false;
  readonly #pubsub: PubSubClient;
  readonly #topic: string;
  readonly #options: ResolvedOptions;
  readonly #stats: PushStats;
  readonly #publishChain: PublishChain | undefined;

  constructor(init: PublisherInit) {
    this.#pubsub = init.pubsub;
    this.#topic = init.topic;
    this.#options = init.options;
    this.#stats = init.stats;
    this.#publishChain = init.publishChain;
  }

  /**
   * Publishes events to the topic, each through the publish phase. Rejects
   * with InvalidEventError (nothing published) or with a PubSubError once
   * the backend failed every retry.
   */
  async publish(options: PublishOptions, events: PushEvent[]): Promise<void> {
    if (this.closing) throw new ServiceUnavailableError('The push middleware is closed');
    const prepared = events.map((event) => this.#prepare(event));
    if (this.#publishChain === undefined) {
      await Promise.all(
        prepared.map((p) =>
          this.#send(p.subject, encodePublication(this.#headers(p.subject, options), p.eventBytes)),
        ),
      );
      return;
    }
    for (const p of prepared) {
      const ctx: PublishContext = {
        event: p.event,
        publication: this.#headers(p.subject, options),
        options,
        subject: p.subject,
        state: {},
      };
      await this.#publishChain(ctx, (c) =>
        this.#send(c.subject, encodePublication(c.publication as PublicationHeaders, p.eventBytes)),
      );
    }
  }

  /**
   * The envelope's headers for a publication. Why: `publishWith({ trackingName })` is
   * documented as the publication's trackingName, but it never reached the envelope.
   */
  #headers(subject: string, options: PublishOptions): PublicationHeaders {
    const headers: PublicationHeaders = { topic: subject };
    if (typeof options.trackingName === 'string') headers.trackingName = options.trackingName;
    return headers;
  }

  #prepare(event: PushEvent): PreparedEvent {
    let timestamp: Date;
    let entityBytes: Uint8Array;
    try {
      timestamp = normalizeTimestamp(event);
      entityBytes = encodeEntity(event.entity);
      // Only an entity whose bytes say __proto__ is searched: the common one costs a byte scan.
      const path = mayHoldProtoKey(entityBytes) ? findProtoKey(event.entity) : undefined;
      if (path !== undefined) {
        throw new EventFormatError(
          `${path}: an entity may not hold a __proto__ key (MessagePack decoders refuse it)`,
        );
      }
    } catch (error) {
      const message =
        error instanceof EventFormatError ? error.message : 'the entity cannot be encoded';
      throw new InvalidEventError(message, { cause: error });
    }
    return {
      event: { ...event, timestamp },
      eventBytes: encodeMsgpackEvent(event.identity, event.type, entityBytes, timestamp),
      subject: publicationSubject(
        this.#topic,
        event.identity,
        event.type,
        this.#options.subjectHierarchies,
      ),
    };
  }

  async #send(subject: string, bytes: Uint8Array): Promise<void> {
    const retries = this.#options.publishRetries;
    // One id for every attempt: a history that stored an attempt whose answer was lost (a
    // JetStream PubAck that timed out) drops the retry as a duplicate instead of storing it twice.
    const attempt0 = this.#pubsub.history === undefined ? undefined : { id: randomUUID() };
    for (let attempt = 0; ; attempt++) {
      try {
        await this.#pubsub.publish(subject, bytes, attempt0);
        this.#stats.published++;
        return;
      } catch (error) {
        // Before connect() there is nothing to wait for, and a refusal by the broker (a payload
        // over max_payload, a subject it does not allow) will not change: fail at once.
        const refused = error instanceof PubSubError && error.code === 'PUSH_PUBSUB';
        if (error instanceof NotConnectedError || refused || attempt >= retries) {
          this.#stats.publishFailures++;
          if (error instanceof NotConnectedError) throw error;
          throw new PubSubError(
            refused
              ? `publish refused by the backend: ${error.message}`
              : `publish failed after ${attempt + 1} attempts: ${(error as Error).message}`,
            'PUSH_PUBLISH_FAILED',
            { cause: error },
          );
        }
        this.#stats.publishRetries++;
        this.#options.logger.debug(
          { attempt: attempt + 1, err: describeError(error) },
          'pushwire: publish failed, retrying',
        );
        await delay(this.#options.publishRetryDelay * 2 ** attempt);
      }
    }
  }
}
