/**
 * What the history backends of this folder share (LocalPubSub and Redis;
 * the JetStream one keeps a stream per topic and needs none of it): which
 * history a subject is stored in, which subjects a topic covers, positions
 * as strings, and the checks of `read()`'s arguments.
 */
import { randomBytes } from 'node:crypto';

/**
 * The root a subject's event is stored under: its first token (`events`
 * for `events.task.create`). `publish()` knows only the subject, not the
 * topic of the server that will read it, so the root is the one thing both
 * sides can compute; a topic with dots (`acme.events`) shares its first
 * token's history and positions, and `follow`/`read` filter its subjects.
 */
export function historyRoot(subject: string): string {
  const dot = subject.indexOf('.');
  return dot === -1 ? subject : subject.slice(0, dot);
}

/** True when `subject` belongs to `topic`: the topic itself or a subject below it (`topic.…`). */
export function topicCovers(topic: string, subject: string): boolean {
  return (
    subject === topic ||
    (subject.length > topic.length && subject.startsWith(topic) && subject[topic.length] === '.')
  );
}

/**
 * A new epoch: 12 hex characters, random, so two histories (two processes,
 * a stream lost and made again) never share one by chance.
 */
export function newEpoch(): string {
  return randomBytes(6).toString('hex');
}

/** Splits `<epoch>:<offset>` at its first colon; undefined when either side is empty or `position` is not a string. */
export function splitPosition(position: unknown): { epoch: string; offset: string } | undefined {
  if (typeof position !== 'string') return undefined;
  const colon = position.indexOf(':');
  if (colon <= 0 || colon === position.length - 1) return undefined;
  return { epoch: position.slice(0, colon), offset: position.slice(colon + 1) };
}

/** Checks `read()`'s `max`: a positive integer, else a RangeError (a bug of the caller, not a bad `since`). */
export function checkReadMax(max: number): void {
  if (!Number.isSafeInteger(max) || max < 1) {
    throw new RangeError(`history.read: max must be a positive integer, got ${String(max)}`);
  }
}

/** Checks a topic given to `follow()` or `read()`: a non-empty string, else a TypeError. */
export function checkTopic(topic: string): void {
  if (typeof topic !== 'string' || topic === '') {
    throw new TypeError('history: topic must be a non-empty string');
  }
}
