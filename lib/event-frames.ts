/**
 * The frames of an event, built at most once per frame format and written
 * as they are to every session of that format: the reason fan-out costs
 * one encode per event, not one per session.
 */
import { buildFrame, buildTextFrame } from './frame.js';
import type { WireEvent } from './protocol/event.js';
import { encode } from './protocol/msgpack.js';
import { FRAME_FORMATS, FrameFormat } from './transport/contract.js';
import { sseEvent } from './transport/sse.js';

/** The bytes of `event` in `format`. Throws when its entity cannot be encoded that way. */
export function frameEvent(event: WireEvent, format: FrameFormat): Buffer {
  switch (format) {
    case FrameFormat.WebSocketMsgpack:
      return buildFrame(event.toMsgpack(), true);
    case FrameFormat.WebSocketJson:
      return buildTextFrame(event.toJson());
    case FrameFormat.SseJson:
      // The position is also the SSE id, which EventSource sends back as Last-Event-ID.
      return sseEvent(event.toJson(), event.position);
  }
}

/**
 * The frame of an error event (docs/PROTOCOL.md section 6) in `format`: the
 * same event as any other over WebSocket, a named `error` event over SSE.
 */
export function errorEventFrame(event: WireEvent, format: FrameFormat): Buffer {
  return format === FrameFormat.SseJson
    ? sseEvent(event.toJson(), undefined, 'error')
    : frameEvent(event, format);
}

/** The frames of one event, built at most once per format. */
export class EventFrames {
  // Why per format: an entity that does not decode fails only the JSON frame (MessagePack
  // sessions get the publisher's bytes as they are); remembering the failure (null) tries once.
  readonly #frames: (Buffer | null | undefined)[] = new Array<Buffer | null | undefined>(
    FRAME_FORMATS,
  );
  /** True once some format could not be built: the event is counted as undecodable. */
  failed = false;
  constructor(readonly event: WireEvent) {}

  /** The frame in `format`, or undefined when the event cannot be encoded that way. */
  for(format: FrameFormat): Buffer | undefined {
    const cached = this.#frames[format];
    if (cached !== undefined) return cached ?? undefined;
    try {
      return (this.#frames[format] = frameEvent(this.event, format));
    } catch {
      this.failed = true;
      this.#frames[format] = null;
      return undefined;
    }
  }
}

/** The frames of several events, end to end, built at most once per format. */
export class BatchFrames {
  readonly #frames: (Buffer | null | undefined)[] = new Array<Buffer | null | undefined>(
    FRAME_FORMATS,
  );
  constructor(private readonly items: readonly { frames: EventFrames }[]) {}

  /** The concatenated frames, or undefined when an event cannot be encoded in this format. */
  for(format: FrameFormat): Buffer | undefined {
    let frames = this.#frames[format];
    if (frames === undefined) {
      const parts: Buffer[] = [];
      for (const item of this.items) {
        const frame = item.frames.for(format);
        if (frame === undefined) break;
        parts.push(frame);
      }
      frames = parts.length === this.items.length ? Buffer.concat(parts) : null;
      this.#frames[format] = frames;
    }
    return frames ?? undefined;
  }
}

/**
 * A control frame (a map that is not an event, such as the recovery frame
 * of docs/PROTOCOL.md) in `format`: `{ [name]: body }` as JSON text or
 * MessagePack binary over WebSocket; over SSE, the same JSON as an event
 * of type `name` whose id is `id` (where an EventSource resumes from).
 */
export function controlFrame(
  name: string,
  body: Record<string, unknown>,
  format: FrameFormat,
  id?: string,
): Buffer {
  const value = { [name]: body };
  switch (format) {
    case FrameFormat.WebSocketMsgpack:
      return buildFrame(encode(value), true);
    case FrameFormat.WebSocketJson:
      return buildTextFrame(JSON.stringify(value));
    case FrameFormat.SseJson:
      return sseEvent(JSON.stringify(value), id, name);
  }
}
