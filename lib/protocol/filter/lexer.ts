/**
 * The lexer of the filter language: source text to tokens, one at a time,
 * on demand (the parser peeks one token ahead, never more). It knows words,
 * numbers, quoted strings and symbols, not keywords: a word is a key, a
 * keyword or a value depending on where the parser meets it.
 */

import { FilterSyntaxError } from './errors.js';

/** What a token is, as far as the lexer can tell without context. */
export type TokenKind =
  | 'word' // a bare word: a key, a keyword or a string value
  | 'number' // a numeric literal; its raw text may also serve as a key
  | 'string' // a quoted string, escapes resolved
  | 'symbol' // ( ) [ ] , == != < <= > >=
  | 'unknown' // any other character: reported by the parser, which knows what it wanted
  | 'end';

/** One token: its kind, its text and where it starts. */
export interface Token {
  readonly kind: TokenKind;
  /** The source text of the token (quotes and backslashes included for strings). */
  readonly raw: string;
  /** The string value of a quoted string; the raw text otherwise. */
  readonly text: string;
  /** 0-based offset in the source. */
  readonly start: number;
}

// Letters and digits of any script (a key like `prénom` is an attribute
// name too), plus `_ - @ $ #`, plus `.` which separates path segments.
const WORD = /[\p{L}\p{M}\p{N}_@$#.-]+/uy;
const WORD_CHAR = /[\p{L}\p{M}\p{N}_@$#.-]/u;
/** A bare key segment as the lexer reads one (no `.`): the printer writes such names unquoted. */
export const NAME = /^[\p{L}\p{M}\p{N}_@$#-]+$/u;
// A number must not run into word characters: `2024-01-01` and `3px` are
// bare words (strings), not a number followed by garbage.
const NUMBER = /-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?/y;
const SPACE = /\s+/y;
const SYMBOLS = ['==', '!=', '<=', '>=', '<', '>', '(', ')', '[', ']', ','] as const;

/**
 * Reads tokens from one source text. Throws a {@link FilterSyntaxError} for a
 * string left open; any other unexpected character is an `unknown` token.
 */
export class Lexer {
  private pos = 0;
  private peeked: Token | undefined;

  /** A lexer at the start of `source`; nothing is scanned until the first `peek`. */
  constructor(private readonly source: string) {}

  /** The next token, without consuming it (an `end` token, repeatedly, at the end). */
  peek(): Token {
    this.peeked ??= this.scan();
    return this.peeked;
  }

  /** The next token, consumed. */
  next(): Token {
    const token = this.peek();
    this.peeked = undefined;
    return token;
  }

  /** True when the next non-space character is `ch` (used for `date(`). */
  nextCharIs(ch: string): boolean {
    // Called with the word already peeked, so `pos` is just after it.
    SPACE.lastIndex = this.pos;
    const at = SPACE.test(this.source) ? SPACE.lastIndex : this.pos;
    return this.source[at] === ch;
  }

  private scan(): Token {
    const src = this.source;
    SPACE.lastIndex = this.pos;
    if (SPACE.test(src)) this.pos = SPACE.lastIndex;
    const start = this.pos;
    if (start >= src.length) return { kind: 'end', raw: '', text: '', start };
    const ch = src[start] as string;

    if (ch === '"' || ch === "'") return this.scanString(ch, start);

    NUMBER.lastIndex = start;
    if (NUMBER.test(src)) {
      const end = NUMBER.lastIndex;
      const after = src.codePointAt(end);
      if (after === undefined || !WORD_CHAR.test(String.fromCodePoint(after))) {
        this.pos = end;
        const raw = src.slice(start, end);
        return { kind: 'number', raw, text: raw, start };
      }
    }

    WORD.lastIndex = start;
    if (WORD.test(src)) {
      this.pos = WORD.lastIndex;
      const raw = src.slice(start, this.pos);
      return { kind: 'word', raw, text: raw, start };
    }

    for (const symbol of SYMBOLS) {
      if (src.startsWith(symbol, start)) {
        this.pos = start + symbol.length;
        return { kind: 'symbol', raw: symbol, text: symbol, start };
      }
    }

    // One code point, so that an emoji is reported whole.
    const unknown = String.fromCodePoint(src.codePointAt(start) as number);
    this.pos = start + unknown.length;
    return { kind: 'unknown', raw: unknown, text: unknown, start };
  }

  private scanString(quote: string, start: number): Token {
    const src = this.source;
    let value = '';
    let i = start + 1;
    while (i < src.length) {
      const ch = src[i] as string;
      if (ch === quote) {
        this.pos = i + 1;
        return { kind: 'string', raw: src.slice(start, i + 1), text: value, start };
      }
      if (ch === '\\' && i + 1 < src.length) {
        const escaped = src[i + 1] as string;
        if (escaped === '"' || escaped === "'" || escaped === '\\') {
          value += escaped;
          i += 2;
          continue;
        }
        // Any other backslash is kept as written, so that regular expressions
        // read naturally: "\d+" is the pattern \d+ (so is "\\d+").
      }
      value += ch;
      i += 1;
    }
    const column = src.length + 1;
    throw new FilterSyntaxError(
      `expected '${quote}' at column ${column} to close the string that starts at column ${start + 1}`,
      column,
      quote,
    );
  }
}
