/**
 * WebSocket frames built once per event and written as they are to every
 * session of that encoding (RFC 6455 section 5.2; a server never masks).
 */

const OPCODE_TEXT = 0x1;
const OPCODE_BINARY = 0x2;

/**
 * One complete, final, unmasked data frame holding `payload`: a text frame
 * for JSON (`binary` false, payload UTF-8) or a binary frame for MessagePack.
 */
export function buildFrame(payload: Uint8Array, binary: boolean): Buffer {
  const length = payload.byteLength;
  const headerLength = length < 126 ? 2 : length < 65536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(headerLength + length);
  frame[0] = 0x80 | (binary ? OPCODE_BINARY : OPCODE_TEXT);
  if (length < 126) {
    frame[1] = length;
  } else if (length < 65536) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 127;
    // Payloads stay far below 2^53 bytes, so the high word is the division's quotient.
    frame.writeUInt32BE(Math.floor(length / 0x100000000), 2);
    frame.writeUInt32BE(length >>> 0, 6);
  }
  frame.set(payload, headerLength);
  return frame;
}

/** A text frame of a string (UTF-8). */
export function buildTextFrame(text: string): Buffer {
  return buildFrame(Buffer.from(text, 'utf8'), false);
}
