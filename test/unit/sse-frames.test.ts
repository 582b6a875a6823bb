/**
 * The bytes of SSE frames (docs/PROTOCOL.md section 10): events, named
 * control events, ids, and data split at line breaks so that a reader
 * joining `data:` lines with `\n` gets the same JSON back.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { controlFrame, errorEventFrame, frameEvent } from '../../lib/event-frames.js';
import { WireEvent } from '../../lib/protocol/event.js';
import { FrameFormat } from '../../lib/transport/contract.js';
import { sseEvent } from '../../lib/transport/sse.js';

/** What an SSE reader makes of one event's bytes: its fields, data lines joined with `\n`. */
function read(bytes: Buffer): { event?: string; id?: string; data: string } {
  const text = bytes.toString('utf8');
  assert.ok(text.endsWith('\n\n'), 'an event ends with a blank line');
  const fields: { event?: string; id?: string; data: string[] } = { data: [] };
  for (const line of text.slice(0, -2).split('\n')) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon);
    const value = line.slice(colon + 2);
    assert.equal(line[colon + 1], ' ', 'one space after the colon');
    if (name === 'data') fields.data.push(value);
    else if (name === 'event') fields.event = value;
    else if (name === 'id') fields.id = value;
    else assert.fail(`unexpected field ${name}`);
  }
  return { ...fields, data: fields.data.join('\n') };
}

const event = (position?: string): WireEvent => {
  const e = new WireEvent({
    identity: 'task',
    type: 'create',
    timestamp: new Date('2026-12-07T00:00:00Z'),
    entityEncoding: 'application/json',
    entity: { name: 'a\nb' },
  });
  e.position = position;
  return e;
};

describe('SSE frames', () => {
  it('an event is its JSON frame as data, with its position as id', () => {
    const e = event('ep:12');
    const frame = read(frameEvent(e, FrameFormat.SseJson));
    assert.equal(frame.data, e.toJson());
    assert.equal(frame.id, 'ep:12');
    assert.equal(frame.event, undefined);
    assert.equal(read(frameEvent(event(), FrameFormat.SseJson)).id, undefined);
  });

  it('splits data at raw line breaks of every kind, and a reader gets the same text back (joined with \\n)', () => {
    const json = '{\n  "a": 1,\r\n  "b": [\r2]\n}';
    const frame = read(sseEvent(json));
    assert.equal(frame.data, json.replace(/\r\n|\r/g, '\n'));
    assert.deepEqual(JSON.parse(frame.data), JSON.parse(json));
    assert.equal(sseEvent(json).toString().includes('\r'), false);
  });

  it('drops an id that would break the stream', () => {
    for (const id of ['a\nb', 'a\rb', 'a\0b']) assert.equal(read(sseEvent('{}', id)).id, undefined);
  });

  it('error events and the recovery frame are named events; the recovery frame carries its position as id', () => {
    const error = read(errorEventFrame(event(), FrameFormat.SseJson));
    assert.equal(error.event, 'error');
    const recovery = read(
      controlFrame('recovery', { recovered: true, position: 'ep:3' }, FrameFormat.SseJson, 'ep:3'),
    );
    assert.equal(recovery.event, 'recovery');
    assert.equal(recovery.id, 'ep:3');
    assert.deepEqual(JSON.parse(recovery.data), {
      recovery: { recovered: true, position: 'ep:3' },
    });
  });

  it('WebSocket formats are unchanged: the error event is a plain event frame', () => {
    const e = event();
    assert.deepEqual(
      errorEventFrame(e, FrameFormat.WebSocketJson),
      frameEvent(e, FrameFormat.WebSocketJson),
    );
  });
});
