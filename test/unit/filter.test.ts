// The filter language, PROTOCOL.md section 7: one describe per rule, then the
// refusals (limits, patterns RE2 refuses), the ReDoS bound, the printer, and
// property-based checks.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { RE2JS } from 're2js';
import {
  DEFAULT_FILTER_LIMITS,
  FilterSyntaxError,
  compileFilter,
  parseFilter,
  printFilter,
} from '../../lib/protocol/filter.js';
import type {
  FilterComparison,
  FilterNode,
  FilterScalar,
  FilterScalarOperator,
} from '../../lib/protocol/filter.js';

/** The entity most rows read. */
const task = {
  ID: '42',
  name: 'hello',
  Name: 'Upper',
  status: 'open',
  priority: 3,
  ratio: 0.5,
  big: 1000,
  negative: -2,
  done: false,
  urgent: true,
  count: '3',
  tags: ['urgent', 'backend', 3],
  list: [1, 2],
  obj: { x: 1 },
  description: 'Fix the login page',
  created: '2026-11-23T21:40:00.123Z',
  owner: { name: 'ann', team: { id: 'core' } },
  'a.b': 'quoted',
  'with space': 'yes',
  '_-@$#': 'symbols',
  é: 'accent',
  404: 'numeric key',
  nothing: null,
};

/** [expression, entity, expected match] */
type Row = readonly [string, unknown, boolean];

/** The meaning table, grouped by the rule of section 7 each row illustrates. */
const TABLE: Record<string, readonly Row[]> = {
  'comparisons are joined by and/or and grouped with parentheses': [
    ['name == "hello" and (priority >= 3 or tags contains ["urgent"])', task, true],
    ['name == hello and priority == 4', task, false],
    ['name == bye or priority == 3', task, true],
    ['name == bye or priority == 4', task, false],
    ['(name == hello)', task, true],
    ['((((priority == 3))))', task, true],
    ['(name == bye or priority == 3) and status == open', task, true],
    ['name == bye or (priority == 3 and status == closed)', task, false],
    ['(a == 1 and b == 2) and (c == 3 or d == 4)', { a: 1, b: 2, d: 4 }, true],
  ],
  'keys are attribute names, dotted paths or quoted strings taken whole': [
    ['owner.name == ann', task, true],
    ['owner.team.id == core', task, true],
    ['owner.team.id == other', task, false],
    ['"a.b" == quoted', task, true],
    ["'a.b' == quoted", task, true],
    ['a.b == quoted', task, false],
    ['"owner.name" == ann', task, false],
    ["'with space' == yes", task, true],
    ['_-@$# == symbols', task, true],
    ['é == accent', task, true],
    ['404 == "numeric key"', task, true],
    ['"" exists', { '': 1 }, true],
  ],
  'values are strings, bare words, numbers, booleans and lists': [
    ['status == "open"', task, true],
    ["status == 'open'", task, true],
    ['status == open', task, true],
    ['description == "Fix the login page"', task, true],
    ['q == "say \\"hi\\""', { q: 'say "hi"' }, true],
    ['q == \'say "hi"\'', { q: 'say "hi"' }, true],
    ["s == 'it\\'s'", { s: "it's" }, true],
    ['s == "it\'s"', { s: "it's" }, true],
    ['b == "a\\\\b"', { b: 'a\\b' }, true],
    ['b == "a\\db"', { b: 'a\\db' }, true],
    ['priority == 3.0', task, true],
    ['priority == 3e0', task, true],
    ['ratio == .5', task, true],
    ['ratio == 5e-1', task, true],
    ['negative == -2', task, true],
    ['big == 1e3', task, true],
    ['big == 1E+3', task, true],
    ['urgent == true', task, true],
    ['done == false', task, true],
    ['urgent == "true"', task, false],
    ['priority in [1, 2, 3]', task, true],
    ['created > 2026-01-01', task, true],
    ['v == 3px', { v: '3px' }, true],
    ['n == null', { n: 'null' }, true],
    ['n == null', { n: null }, false],
  ],
  'whitespace is optional where tokens stay apart': [
    ['priority>2', task, true],
    ['(priority>2)and(status==open)', task, true],
    ['status=="open"or done==true', task, true],
    ['tags contains[urgent]', task, true],
    ['priority\t>\n2', task, true],
    ['   priority   >   2   ', task, true],
    ['priority>=-1', task, true],
  ],
  '== and != compare without coercion; lists and objects never equal a value': [
    ['priority == 3', task, true],
    ['priority != 3', task, false],
    ['priority != 4', task, true],
    ['priority == "3"', task, false],
    ['count == 3', task, false],
    ['count == "3"', task, true],
    ['tags == urgent', task, false],
    ['list == 1', task, false],
    ['list != 1', task, true],
    ['obj == 1', task, false],
    ['obj != 1', task, true],
    ['done == 0', task, false],
  ],
  '< <= > >= order two numbers or two strings, otherwise false': [
    ['priority > 2', task, true],
    ['priority < 3', task, false],
    ['priority <= 3', task, true],
    ['priority >= 4', task, false],
    ['name > "a"', task, true],
    ['name < "b"', task, false],
    ['count > 2', task, false],
    ['priority > "2"', task, false],
    ['created >= "2026-11-23T00:00:00Z"', task, true],
    ['created < "2026-11-23T21:40:00.124Z"', task, true],
    ['urgent > false', task, false],
    ['tags > 1', task, false],
  ],
  'in / not in: equals one of the listed values / none of them': [
    ['status in [open, closed]', task, true],
    ['status in [closed]', task, false],
    ['priority in ["3"]', task, false],
    ['status not in [closed]', task, true],
    ['status not in [open]', task, false],
    ['tags in [urgent]', task, false],
    ['urgent in [true]', task, true],
    ['status in []', task, false],
    ['status not in []', task, true],
  ],
  'contains / not contains: a list holding, or a string containing, a listed value': [
    ['tags contains urgent', task, true],
    ['tags contains [nope, backend]', task, true],
    ['tags contains 3', task, true],
    ['tags contains "3"', task, false],
    ['tags not contains nope', task, true],
    ['tags not contains urgent', task, false],
    ['description contains login', task, true],
    ['description contains [LOGIN]', task, false],
    ['description not contains login', task, false],
    ['priority contains 3', task, false],
    ['priority not contains 3', task, true],
    ['obj contains x', task, false],
  ],
  'matches: a string in which one of the regular expressions finds a match': [
    ['name matches "^hel"', task, true],
    ['name matches "^el"', task, false],
    ['name matches ell', task, true],
    ['name matches ["^x", "o$"]', task, true],
    ['priority matches "3"', task, false],
    ['description matches "\\bl\\w+n\\b"', task, true],
    ['description matches "\\\\bLOGIN"', task, false],
    ['e matches "^\\p{L}$"', { e: 'é' }, true],
    ['e matches "^.$"', { e: '😀' }, true],
  ],
  'matches: patterns are RE2 syntax (Go regexp), not JavaScript RegExp': [
    // Plain text runs by string search; anchors at both ends only.
    ['name matches "^hello$"', task, true],
    ['name matches "^hell$"', task, false],
    ['name matches "llo$"', task, true],
    ['name matches "^$"', { name: '' }, true],
    ['name matches "$"', task, true],
    // No flag: case-sensitive, ^ and $ anchor the text, . stops at a newline.
    ['name matches "HELLO"', task, false],
    ['name matches "(?i)HELLO"', task, true],
    ['e matches "(?i)^é$"', { e: 'É' }, true],
    ['e matches "(?i)straße"', { e: 'STRASSE' }, false],
    ['e matches "o$"', { e: 'hello\nworld' }, false],
    ['e matches "(?m)o$"', { e: 'hello\nworld' }, true],
    ['e matches "^a.b$"', { e: 'a\nb' }, false],
    ['e matches "(?s)^a.b$"', { e: 'a\nb' }, true],
    ['e matches "^hello$"', { e: 'hello\n' }, false],
    ['e matches "\\Ahel"', task, false],
    ['name matches "\\Ahel"', task, true],
    ['name matches "llo\\z"', task, true],
    // Unicode: code points, \p{…} properties and scripts; \d \w \s \b are ASCII.
    ['e matches "^\\p{Greek}+$"', { e: 'αβγ' }, true],
    ['e matches "^\\pL\\pN$"', { e: 'é٣' }, true],
    ['e matches "^\\x{1F600}$"', { e: '😀' }, true],
    ['e matches "\\d"', { e: '٣' }, false],
    ['e matches "\\w"', { e: 'é' }, false],
    ['e matches "\\s"', { e: '\u00a0' }, false],
    ['e matches "\\s"', { e: 'a b' }, true],
    // RE2 extras: escaped punctuation, \Q…\E, POSIX classes, named groups.
    ['e matches "a\\-b"', { e: 'a-b' }, true],
    ['e matches "\\Qa.b\\E"', { e: 'axb' }, false],
    ['e matches "\\Qa.b\\E"', { e: 'a.b' }, true],
    ['e matches "^[[:digit:]]+$"', { e: '2026' }, true],
    ['e matches "^(?P<y>\\d{4})-(?<m>\\d{2})$"', { e: '2026-11' }, true],
    ['e matches "a{2,}"', { e: 'xaay' }, true],
    ['e matches "{"', { e: 'a{b' }, true],
  ],
  'exists / not exists: the attribute is present / absent': [
    ['name exists', task, true],
    ['missing exists', task, false],
    ['missing not exists', task, true],
    ['name not exists', task, false],
    ['done exists', task, true],
    ['owner.team exists', task, true],
    ['list exists', task, true],
  ],
  'and and or have no precedence: they apply left to right': [
    ['name == hello or priority == 4 and status == closed', task, false],
    ['name == hello or (priority == 4 and status == closed)', task, true],
    ['urgent == true or done == true and done == true', task, false],
    ['done == true and urgent == true or priority == 3', task, true],
    ['ID == "42" or name == x and urgent == true or done == true and priority == 3', task, true],
    ['ID == "42" or name == x and done == true or urgent == false and priority == 3', task, false],
  ],
  'a missing key and null are both absent': [
    ['missing == 1', task, false],
    ['missing != 1', task, true],
    ['nothing == 1', task, false],
    ['nothing != 1', task, true],
    ['nothing exists', task, false],
    ['nothing not exists', task, true],
    ['missing < 1', task, false],
    ['nothing >= "a"', task, false],
    ['missing in [1]', task, false],
    ['nothing not in [1]', task, true],
    ['nothing contains x', task, false],
    ['missing not contains x', task, true],
    ['missing matches x', task, false],
    ['nothing matches ".*"', task, false],
  ],
  'keys are case-sensitive; operators, and/or and true/false are not': [
    ['Name == Upper', task, true],
    ['name == Upper', task, false],
    ['NAME exists', task, false],
    ['status == OPEN', task, false],
    ['status == open AND priority == 3', task, true],
    ['status == closed Or priority == 3', task, true],
    ['tags CONTAINS urgent', task, true],
    ['status NOT IN [closed]', task, true],
    ['tags Not Contains nope', task, true],
    ['name MATCHES "^h"', task, true],
    ['status In [open]', task, true],
    ['name EXISTS', task, true],
    ['missing NoT ExIsTs', task, true],
    ['urgent == True', task, true],
    ['done == FALSE', task, true],
  ],
  'a single value where a list is expected is a one-element list': [
    ['status in open', task, true],
    ['status not in open', task, false],
    ['tags contains backend', task, true],
    ['name matches hel', task, true],
  ],
  'a dotted path through something that is not an object is absent': [
    ['name.first exists', task, false],
    ['name.first not exists', task, true],
    ['tags.0 exists', task, false],
    ['nothing.x exists', task, false],
    ['priority.x != 1', task, true],
    ['owner.name.x == ann', task, false],
    ['name exists', 42, false],
    ['name not exists', null, true],
    ['name exists', ['name'], false],
    ['length exists', 'a string', false],
  ],
  'only own properties are attributes': [
    ['constructor exists', {}, false],
    ['toString exists', {}, false],
    ['hasOwnProperty not exists', {}, true],
    ['__proto__ exists', {}, false],
    ['__proto__ exists', JSON.parse('{"__proto__": 1}'), true],
    ['__proto__ == 1', JSON.parse('{"__proto__": 1}'), true],
    ['constructor.name exists', {}, false],
    ['a.constructor exists', { a: {} }, false],
    ['constructor == x', { constructor: 'x' }, true],
  ],
};

/** [expression, column, expected] */
type Invalid = readonly [string, number, string];

const TOP = "'and', 'or' or the end";
const INVALID: readonly Invalid[] = [
  ['', 1, 'a comparison'],
  ['   ', 1, 'a comparison'],
  ['a', 2, 'an operator'],
  ['a ==', 5, 'a value'],
  ['a == and', 6, 'a value'],
  ['a == [1]', 6, 'a single value'],
  ['a < ["x"]', 5, 'a single value'],
  ['a = 1', 3, 'an operator'],
  ['a ! = 1', 3, 'an operator'],
  ['a == 1 b', 8, TOP],
  ['a == 1 && b == 2', 8, TOP],
  ['(a == 1', 8, "'and', 'or' or ')'"],
  ['a == 1)', 7, TOP],
  ['a exists 1', 10, TOP],
  ['a not matches x', 7, "'in', 'contains' or 'exists'"],
  ['a not', 6, "'in', 'contains' or 'exists'"],
  ['a == date(2020-01-01)', 6, 'a value'],
  ['a in [now ()]', 7, 'a value'],
  ['a == "abc', 10, '"'],
  ["a == 'abc\\'", 12, "'"],
  ['a..b == 1', 3, 'an attribute name'],
  ['.a == 1', 1, 'an attribute name'],
  ['a.b. == 1', 4, 'an attribute name'],
  ['a in [1,]', 9, 'a value'],
  ['a in [1 2]', 9, "',' or ']'"],
  ['a in [1', 8, "',' or ']'"],
  ['a in [[1]]', 7, 'a value'],
  ['a in', 5, 'a value or a list'],
  ['a matches 3', 11, 'a string pattern'],
  ['a matches [x, true]', 15, 'a string pattern'],
  ['a matches "["', 11, 'a valid regular expression'],
  ['a matches "(x)\\1"', 11, 'a valid regular expression'],
  ['a matches "(?=x)"', 11, 'a valid regular expression'],
  ['a matches "(?!x)y"', 11, 'a valid regular expression'],
  ['a matches "(?<=x)y"', 11, 'a valid regular expression'],
  ['a matches "(?<q>x)\\k<q>"', 11, 'a valid regular expression'],
  ['a matches "\\u0041"', 11, 'a valid regular expression'],
  ['a matches "x{1001}"', 11, 'a valid regular expression'],
  ['a matches "a**"', 11, 'a valid regular expression'],
  ['b == 1 or a matches [x, "\\Z"]', 25, 'a valid regular expression'],
  ['a == 1e999', 6, 'a finite number'],
  ['a == 1 and', 11, "an attribute name or '('"],
  ['a == 1 or ()', 12, "an attribute name or '('"],
  ['== 1', 1, "an attribute name or '('"],
  ['()', 2, "an attribute name or '('"],
  ['a == €', 6, 'a value'],
  ['a == 1 and\n(b ==', 17, 'a value'],
];

describe('filter expressions (PROTOCOL.md section 7)', () => {
  it('has a meaning table of at least 70 rows and an invalid table of at least 20', () => {
    const rows = Object.values(TABLE).reduce((n, rows) => n + rows.length, 0);
    assert.ok(rows >= 70, `${rows} rows`);
    assert.ok(INVALID.length >= 20, `${INVALID.length} invalid rows`);
  });

  for (const [rule, rows] of Object.entries(TABLE)) {
    describe(rule, () => {
      for (const [expression, entity, expected] of rows) {
        it(`${expression} → ${expected} for ${JSON.stringify(entity)?.slice(0, 40)}`, () => {
          assert.equal(compileFilter(expression).match(entity), expected);
        });
      }
    });
  }

  describe('bahamut numbers: a bigint (MessagePack int64) is a number', () => {
    it('compares bigints with numbers exactly', () => {
      assert.equal(compileFilter('n == 3').match({ n: 3n }), true);
      assert.equal(compileFilter('n in [1, 3]').match({ n: 3n }), true);
      assert.equal(compileFilter('n > 2.5').match({ n: 3n }), true);
      assert.equal(compileFilter('n == 9007199254740992').match({ n: 2n ** 53n + 1n }), false);
      assert.equal(compileFilter('n == "3"').match({ n: 3n }), false);
    });
  });

  describe('a filter that does not parse is invalid', () => {
    for (const [expression, column, expected] of INVALID) {
      it(`${JSON.stringify(expression)}: expected ${expected} at column ${column}`, () => {
        assert.throws(
          () => parseFilter(expression),
          (error: unknown) => {
            assert.ok(error instanceof FilterSyntaxError);
            assert.equal(error.code, 'PUSH_FILTER_SYNTAX');
            assert.equal(error.name, 'FilterSyntaxError');
            assert.equal(error.column, column);
            assert.equal(error.expected, expected);
            assert.match(error.message, new RegExp(`at column ${column}\\b`));
            return true;
          },
        );
        // compileFilter refuses exactly what parseFilter refuses.
        assert.throws(() => compileFilter(expression), FilterSyntaxError);
      });
    }

    it('names what it expected and what came before', () => {
      assert.throws(() => parseFilter('priority == and x == 1'), {
        message: "expected a value after '==' at column 13",
      });
      assert.throws(() => parseFilter('a == "x" b'), {
        message: `expected 'and', 'or' or the end after '"x"' at column 10`,
      });
    });

    it('refuses date() and now() with a hint', () => {
      assert.throws(() => parseFilter('created > date("2026-01-01")'), /date\(\) values are not/);
      assert.throws(() => parseFilter('created > NOW()'), /now\(\) values are not/);
      // Without parentheses they are bare words.
      assert.equal(compileFilter('x == date').match({ x: 'date' }), true);
    });
  });

  describe('limits', () => {
    const comparisons = (n: number) => Array.from({ length: n }, (_, i) => `k${i} == ${i}`);

    it('exports documented defaults', () => {
      assert.deepEqual(DEFAULT_FILTER_LIMITS, {
        maxLength: 4096,
        maxDepth: 32,
        maxComparisons: 256,
        maxListLength: 256,
        maxPatternLength: 256,
        maxPatternProgram: 1024,
        maxMatchCost: 128 * 1024,
      });
      assert.ok(Object.isFrozen(DEFAULT_FILTER_LIMITS));
    });

    it('refuses a source longer than maxLength, at the first extra column', () => {
      const ok = `a == "${'x'.repeat(4096 - 7)}"`;
      assert.equal(ok.length, 4096);
      parseFilter(ok);
      assert.throws(
        () => parseFilter(`${ok} `),
        (e: unknown) => e instanceof FilterSyntaxError && e.column === 4097,
      );
      assert.throws(
        () => parseFilter('a == 1 and b == 2', { maxLength: 10 }),
        (e: unknown) => e instanceof FilterSyntaxError && e.column === 11,
      );
    });

    it('refuses parentheses nested deeper than maxDepth', () => {
      const nested = (n: number) => `${'('.repeat(n)}a == 1${')'.repeat(n)}`;
      parseFilter(nested(32));
      assert.throws(
        () => parseFilter(nested(33)),
        (e: unknown) =>
          e instanceof FilterSyntaxError &&
          e.column === 33 &&
          e.expected === 'at most 32 levels of parentheses',
      );
      parseFilter(nested(3), { maxDepth: 3 });
      assert.throws(() => parseFilter(nested(4), { maxDepth: 3 }), FilterSyntaxError);
      // Deep nesting past the limit is refused, not a stack overflow.
      assert.throws(() => parseFilter(nested(2000)), FilterSyntaxError);
    });

    it('refuses more than maxComparisons comparisons, at the first extra key', () => {
      parseFilter(comparisons(256).join(' and '));
      const tooMany = comparisons(257).join(' and ');
      assert.throws(
        () => parseFilter(tooMany),
        (e: unknown) =>
          e instanceof FilterSyntaxError && e.column === tooMany.lastIndexOf('k256') + 1,
      );
      assert.throws(() => parseFilter('a exists or b exists', { maxComparisons: 1 }), {
        message: /more than 1 comparisons at column 13/,
      });
    });

    it('refuses lists longer than maxListLength', () => {
      const list = (n: number) => `a in [${Array.from({ length: n }, (_, i) => i).join(', ')}]`;
      parseFilter(list(256));
      assert.throws(
        () => parseFilter(list(257)),
        (e: unknown) =>
          e instanceof FilterSyntaxError && e.expected === 'at most 256 values in a list',
      );
      assert.throws(() => parseFilter('a in [1, 2, 3]', { maxListLength: 2 }), {
        message: /more than 2 values at column 13/,
      });
    });

    it('refuses patterns longer than maxPatternLength', () => {
      parseFilter(`a matches "${'x'.repeat(256)}"`);
      assert.throws(
        () => parseFilter(`a matches "${'x'.repeat(257)}"`),
        (e: unknown) => e instanceof FilterSyntaxError && e.column === 11,
      );
      assert.throws(
        () => parseFilter('a matches abcd', { maxPatternLength: 3 }),
        FilterSyntaxError,
      );
    });

    it('refuses patterns that compile to more than maxPatternProgram instructions in all', () => {
      // \pL{999}\d is 10 characters and 1002 instructions: a counted repeat multiplies.
      const heavy = '"\\pL{999}\\d"';
      parseFilter(`a matches ${heavy}`);
      const two = `a matches ${heavy} or b matches ${heavy}`;
      assert.throws(
        () => parseFilter(two),
        (e: unknown) =>
          e instanceof FilterSyntaxError &&
          e.column === two.lastIndexOf(heavy) + 1 &&
          e.expected === 'patterns of at most 1024 instructions in all' &&
          /more than 1024 instructions at column/.test(e.message),
      );
      // Every occurrence counts, the same pattern too; plain text counts nothing.
      assert.throws(
        () => parseFilter('a matches "x+" and b matches "x+"', { maxPatternProgram: 5 }),
        {
          message: /more than 5 instructions at column 30/,
        },
      );
      parseFilter(`a matches [${Array(256).fill('"^plain$"').join(', ')}]`, {
        maxPatternProgram: 1,
      });
      // Without counted repeats, the longest patterns fit the default budget.
      parseFilter(
        `a matches [${Array(15)
          .fill(`"${'[a-z]'.repeat(51)}"`)
          .join(', ')}]`,
      );
    });

    it('searches only strings the filter can afford (maxMatchCost), else the comparison is false', () => {
      // 7 instructions: strings up to floor(2^17 / 7) = 18,724 characters are searched.
      const hi = compileFilter('x matches "(?i)hello"');
      assert.equal(hi.match({ x: `${'a'.repeat(18_719)}HELLO` }), true);
      assert.equal(hi.match({ x: `${'a'.repeat(18_720)}HELLO` }), false, 'past the budget');
      // The budget is the filter's: a second pattern halves what each may read.
      const pair = compileFilter('x matches "(?i)hello" or y matches "(?i)hello"');
      assert.equal(pair.match({ y: `${'a'.repeat(9_000)}hello` }), true);
      assert.equal(pair.match({ y: `${'a'.repeat(9_400)}hello` }), false);
      // Plain text and contains count one per value.
      const plain = compileFilter('x matches "needle"');
      assert.equal(plain.match({ x: `${'h'.repeat(131_000)}needle` }), true);
      assert.equal(plain.match({ x: `${'h'.repeat(131_067)}needle` }), false);
      const contains = compileFilter('x contains [a, b]');
      assert.equal(contains.match({ x: `${'h'.repeat(65_000)}b` }), true);
      assert.equal(contains.match({ x: `${'h'.repeat(65_536)}b` }), false);
      assert.equal(compileFilter('x not contains [a, b]').match({ x: 'h'.repeat(70_000) }), false);
      assert.equal(compileFilter('x not contains [a, b]').match({ x: 'h'.repeat(60_000) }), true);
      // Lists in an array attribute are not string searches.
      assert.equal(compileFilter('x contains [a]').match({ x: ['a'] }), true);
      assert.equal(compileFilter('x matches "\\d"', { maxMatchCost: 1 }).match({ x: '12' }), false);
    });

    it('throws a RangeError for a limit that is not a positive integer', () => {
      assert.throws(() => parseFilter('a exists', { maxDepth: 0 }), RangeError);
      assert.throws(() => parseFilter('a exists', { maxLength: 1.5 }), RangeError);
      assert.throws(() => compileFilter('a exists', { maxListLength: Number.NaN }), RangeError);
      parseFilter('a exists', { maxLength: Infinity });
    });
  });

  describe('matches runs in time linear in the string, whatever the pattern (the ReDoS bound)', () => {
    // A correctness test, not a speed test: a backtracking engine takes
    // seconds to forever on these (each is a known super-linear shape), a
    // linear one a few milliseconds. The bounds leave a 2-core CI machine
    // under load a margin of 10 to 50 times.
    const BOUND_MS = { 10_000: 100, 100_000: 400 } as const;
    const dotStars = (k: number) => '.*'.repeat(k);
    /** [pattern, input of length n that defeats a backtracking engine] */
    const hostile: readonly (readonly [string, (n: number) => string])[] = [
      ...[2, 4, 8, 22, 26, 60, 127].map(
        (k) => [`${dotStars(k)}x`, (n: number) => 'item 1234 '.repeat(n / 10)] as const,
      ),
      ...[2, 8, 60, 126].map(
        (k) => [`${dotStars(k)}\\d$`, (n: number) => 'item 1234 '.repeat(n / 10)] as const,
      ),
      ['(a+)+$', (n) => `${'a'.repeat(n - 1)}!`],
      ['(a|a)*b', (n) => 'a'.repeat(n)],
      ['(a|a)*b', (n) => `${'a'.repeat(n - 1)}c`],
      ['(\\w|\\d)+x', (n) => `${'1'.repeat(n - 2)}!x`],
      ['^(?:[a-z]|\\w|[a-f0-9])+$', (n) => `${'a'.repeat(n - 1)}!`],
      ['(?:\\d|\\w|[0-9a-z])*(?:\\d|\\w)*#', (n) => `${'5'.repeat(n - 2)}!#`],
      ['^([a-z]+\\.)+com$', (n) => `${'a.'.repeat(n / 2 - 1)}!!`],
      ['(\\w+\\s?)*$', (n) => `${'word '.repeat(n / 5 - 1)}word!`],
      ['(x+x+)+y', (n) => 'x'.repeat(n)],
      ['(a?){20}a{20}', (n) => 'a'.repeat(n)],
    ];

    for (const [pattern, input] of hostile) {
      for (const n of [10_000, 100_000] as const) {
        const text = input(n);
        it(`${pattern.length > 40 ? `${pattern.slice(0, 37)}…` : pattern} on ${n / 1000} KB: < ${BOUND_MS[n]} ms`, () => {
          assert.ok(pattern.length <= DEFAULT_FILTER_LIMITS.maxPatternLength);
          // No budget: the engine itself must be linear on the whole string.
          const filter = compileFilter(`x matches ${JSON.stringify(pattern)}`, {
            maxMatchCost: Infinity,
          });
          const started = performance.now();
          filter.match({ x: text });
          const elapsed = performance.now() - started;
          assert.ok(elapsed < BOUND_MS[n], `${elapsed.toFixed(1)} ms`);
        });
      }
    }

    it('still finds the matches that exist', () => {
      const unbounded = { maxMatchCost: Infinity };
      assert.equal(compileFilter(`x matches "${dotStars(60)}x"`).match({ x: 'item 1234 x' }), true);
      assert.equal(compileFilter('x matches "(a+)+$"').match({ x: `${'a'.repeat(10_000)}` }), true);
      assert.equal(
        compileFilter('x matches "(a|a)*b"').match({ x: `${'a'.repeat(9_999)}b` }),
        true,
      );
      assert.equal(
        compileFilter('x matches "^(foo|bar)+$"', unbounded).match({ x: 'foo'.repeat(20_000) }),
        true,
      );
    });
  });

  describe('compileFilter', () => {
    it('compiles each pattern once, at compile time, and plain text not at all', () => {
      const original = RE2JS.compile;
      const compiled: string[] = [];
      RE2JS.compile = (regex: string, flags?: number) => {
        compiled.push(regex);
        return original.call(RE2JS, regex, flags);
      };
      try {
        const filter = compileFilter('a matches "^x+" and b matches ["^x+", "y$", "y+$"]');
        assert.deepEqual(compiled, ['^x+', 'y+$']);
        for (let i = 0; i < 100; i += 1) assert.equal(filter.match({ a: 'xa', b: 'xy' }), true);
        assert.deepEqual(compiled, ['^x+', 'y+$']);
      } finally {
        RE2JS.compile = original;
      }
    });

    it('keeps the source and never throws while matching', () => {
      const filter = compileFilter('a.b == 1 or c exists');
      assert.equal(filter.source, 'a.b == 1 or c exists');
      const throwing = {
        get a(): unknown {
          throw new Error('getter');
        },
      };
      assert.equal(filter.match(throwing), false);
      const revocable = Proxy.revocable({}, {});
      revocable.revoke();
      assert.equal(filter.match(revocable.proxy), false);
      assert.equal(filter.match(undefined), false);
      assert.equal(filter.match(Object.create(null)), false);
    });
  });

  describe('printFilter', () => {
    const canonical: readonly (readonly [string, string])[] = [
      ['a==1', 'a == 1'],
      ["A == 'x' AND b IN y", 'A == "x" and b in ["y"]'],
      [
        'a exists OR b exists and c not contains [1,2]',
        '(a exists or b exists) and c not contains [1, 2]',
      ],
      ['(a == 1 and b == 2) and c == 3', '(a == 1 and b == 2) and c == 3'],
      ['a == 1 and b == 2 and c == 3', 'a == 1 and b == 2 and c == 3'],
      ['"a.b" == 1 and x.y == "q\\"\\\\"', '"a.b" == 1 and x.y == "q\\"\\\\"'],
      ['"and" == -0', '"and" == 0'],
      ['a matches "\\d"', 'a matches ["\\\\d"]'],
      ['a == 1E3', 'a == 1000'],
    ];
    for (const [source, printed] of canonical) {
      it(`prints ${source} as ${printed}`, () => {
        assert.equal(printFilter(parseFilter(source)), printed);
        assert.deepEqual(parseFilter(printed), parseFilter(source));
      });
    }

    it('reads a or b exists ... left to right in the tree', () => {
      assert.deepEqual(parseFilter('a == 1 or b == 2 and c == 3'), {
        type: 'and',
        operands: [
          {
            type: 'or',
            operands: [
              { type: 'comparison', path: ['a'], operator: '==', value: 1 },
              { type: 'comparison', path: ['b'], operator: '==', value: 2 },
            ],
          },
          { type: 'comparison', path: ['c'], operator: '==', value: 3 },
        ],
      });
    });

    it('throws a RangeError for a tree no text can produce', () => {
      const bad = [
        { type: 'comparison', path: [], operator: 'exists' },
        { type: 'comparison', path: ['a.b', 'c'], operator: 'exists' },
        { type: 'comparison', path: ['a'], operator: '==', value: Infinity },
        { type: 'and', operands: [{ type: 'comparison', path: ['a'], operator: 'exists' }] },
      ];
      for (const node of bad) assert.throws(() => printFilter(node as FilterNode), RangeError);
    });
  });

  describe('properties', () => {
    // The parser builds plain objects; deepStrictEqual compares prototypes too.
    const NO_NULL_PROTOTYPE = { noNullPrototype: true };
    const keyword = fc.constantFrom('and', 'OR', 'not', 'in', 'exists', 'true', 'False');
    const name = fc.oneof(
      fc.stringMatching(/^[A-Za-z0-9_@$#-]{1,6}$/),
      fc.constantFrom('é', 'prénom', '名前', '1e5', '-1', '5e3', '-'),
      keyword,
    );
    const path = fc.oneof(
      fc.array(name, { minLength: 1, maxLength: 3 }),
      fc.string({ unit: 'binary', maxLength: 6 }).map((s) => [s]),
    );
    const scalar: fc.Arbitrary<FilterScalar> = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 8 }),
      fc.constantFrom('', '"', "'", '\\', 'a"b\\c', 'and', 'true'),
      fc.integer(),
      fc.double({ noNaN: true, noDefaultInfinity: true }).map((n) => (n === 0 ? 0 : n)),
      fc.boolean(),
    );
    const pattern = fc.oneof(
      fc.stringMatching(/^[a-z]{0,4}$/),
      fc.constantFrom('^a', 'b$', '\\d+', '(foo|bar)+', '[a-z]{2,3}', '"', '\\\\'),
    );
    const comparison: fc.Arbitrary<FilterComparison> = fc.oneof(
      fc.record(
        {
          type: fc.constant('comparison' as const),
          path,
          operator: fc.constantFrom<FilterScalarOperator>('==', '!=', '<', '<=', '>', '>='),
          value: scalar,
        },
        NO_NULL_PROTOTYPE,
      ),
      fc.record(
        {
          type: fc.constant('comparison' as const),
          path,
          operator: fc.constantFrom('in' as const, 'not in' as const, 'contains' as const),
          value: fc.array(scalar, { maxLength: 4 }),
        },
        NO_NULL_PROTOTYPE,
      ),
      fc.record(
        {
          type: fc.constant('comparison' as const),
          path,
          operator: fc.constant('matches' as const),
          value: fc.array(pattern, { maxLength: 3 }),
        },
        NO_NULL_PROTOTYPE,
      ),
      fc.record(
        {
          type: fc.constant('comparison' as const),
          path,
          operator: fc.constantFrom('exists' as const, 'not exists' as const),
        },
        NO_NULL_PROTOTYPE,
      ),
    );
    const tree = (leaf: fc.Arbitrary<FilterComparison>): fc.Arbitrary<FilterNode> =>
      fc.letrec<{ node: FilterNode; group: FilterNode }>((tie) => ({
        node: fc.oneof({ maxDepth: 4, depthSize: 'small' }, leaf, tie('group')),
        group: fc.record(
          {
            type: fc.constantFrom('and' as const, 'or' as const),
            operands: fc
              .array(tie('node'), { minLength: 2, maxLength: 3 })
              .map((operands) => operands as unknown as readonly [FilterNode, FilterNode]),
          },
          NO_NULL_PROTOTYPE,
        ),
      })).node;
    const node = tree(comparison);

    const onlySyntaxErrors = (source: string) => {
      try {
        compileFilter(source).match({ a: 1, b: 'x' });
      } catch (error) {
        assert.ok(error instanceof FilterSyntaxError, `not a FilterSyntaxError: ${String(error)}`);
        assert.ok(error.column >= 1 && error.column <= Math.max(source.length, 4096) + 1);
        assert.ok(error.expected.length > 0);
        assert.ok(error.message.includes(`column ${error.column}`));
      }
    };

    it('parseFilter throws nothing but FilterSyntaxError on arbitrary strings', () => {
      fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 60 }), onlySyntaxErrors), {
        numRuns: 1000,
      });
    });

    it('parseFilter throws nothing but FilterSyntaxError on token soup', () => {
      const token = fc.constantFrom(
        ...['a', 'b.c', ' ', '==', '!=', '<', '>=', '=', '!', 'and', 'OR', 'not', 'in'],
        ...['contains', 'matches', 'exists', '(', ')', '[', ']', ',', '"x"', "'y'", '"'],
        ...["'", '\\', '1', '-2.5e3', '1e999', 'true', 'date(', 'now', '"(a+)+"', '.', '..'],
        ...['"\\\\1"', '"["', '€'],
      );
      fc.assert(
        fc.property(
          fc.array(token, { maxLength: 25 }).map((t) => t.join('')),
          onlySyntaxErrors,
        ),
        { numRuns: 1000 },
      );
    });

    it('parseFilter throws nothing but FilterSyntaxError on mutated valid filters', () => {
      const edit = fc.record({
        at: fc.nat(),
        remove: fc.nat({ max: 3 }),
        insert: fc.constantFrom('', '(', ')', '"', "'", '\\', '[', ']', ',', ' ', 'and ', '=', 'x'),
      });
      fc.assert(
        fc.property(node, fc.array(edit, { minLength: 1, maxLength: 4 }), (tree, edits) => {
          let source = printFilter(tree);
          for (const { at, remove, insert } of edits) {
            const i = at % (source.length + 1);
            source = source.slice(0, i) + insert + source.slice(i + remove);
          }
          onlySyntaxErrors(source);
        }),
        { numRuns: 500 },
      );
    });

    it('printFilter then parseFilter gives back an equal tree', () => {
      fc.assert(
        fc.property(node, (tree) => {
          assert.deepStrictEqual(parseFilter(printFilter(tree)), tree);
        }),
        { numRuns: 1000 },
      );
    });

    it('parse(print(parse(x))) equals parse(x) for hand-written spellings', () => {
      for (const rows of Object.values(TABLE)) {
        for (const [expression] of rows) {
          const parsed = parseFilter(expression);
          assert.deepStrictEqual(parseFilter(printFilter(parsed)), parsed, expression);
        }
      }
    });

    // Entities and filters over a small vocabulary, so that comparisons hit.
    const smallPath = fc.array(fc.constantFrom('a', 'b', 'c', '__proto__', 'constructor'), {
      minLength: 1,
      maxLength: 2,
    });
    const smallScalar: fc.Arbitrary<FilterScalar> = fc.constantFrom(0, 1, 2.5, 'x', 'y', '', true);
    const smallComparison: fc.Arbitrary<FilterComparison> = fc.oneof(
      fc.record(
        {
          type: fc.constant('comparison' as const),
          path: smallPath,
          operator: fc.constantFrom<FilterScalarOperator>('==', '!=', '<', '<=', '>', '>='),
          value: smallScalar,
        },
        NO_NULL_PROTOTYPE,
      ),
      fc.record(
        {
          type: fc.constant('comparison' as const),
          path: smallPath,
          operator: fc.constantFrom(
            'in' as const,
            'not in' as const,
            'contains' as const,
            'not contains' as const,
          ),
          value: fc.array(smallScalar, { maxLength: 3 }),
        },
        NO_NULL_PROTOTYPE,
      ),
      fc.record(
        {
          type: fc.constant('comparison' as const),
          path: smallPath,
          operator: fc.constant('matches' as const),
          value: fc.array(fc.constantFrom('x', '^y', '\\d'), { maxLength: 2 }),
        },
        NO_NULL_PROTOTYPE,
      ),
      fc.record(
        {
          type: fc.constant('comparison' as const),
          path: smallPath,
          operator: fc.constantFrom('exists' as const, 'not exists' as const),
        },
        NO_NULL_PROTOTYPE,
      ),
    );
    const smallNode = tree(smallComparison);
    const entity = fc.oneof(
      fc.jsonValue(),
      fc.anything({ withNullPrototype: true, withBigInt: true, withMap: true }),
      fc.letrec<{ value: unknown }>((tie) => ({
        value: fc.oneof(
          { maxDepth: 3 },
          fc.constantFrom(null, 0, 1, 2.5, 'x', 'y', 'xyz', '', true, false),
          fc.array(tie('value'), { maxLength: 3 }),
          fc.dictionary(fc.constantFrom('a', 'b', 'c', '__proto__', 'constructor'), tie('value')),
        ),
      })).value,
      // JSON.parse makes __proto__ an own key, as a decoded entity would have it.
      fc
        .jsonValue()
        .map(
          (v) =>
            JSON.parse(`{"__proto__": ${JSON.stringify(v)}, "a": {"__proto__": 1}}`) as unknown,
        ),
    );

    it('compileFilter(x).match(any value) never throws and returns a boolean', () => {
      fc.assert(
        fc.property(smallNode, entity, (tree, value) => {
          const result = compileFilter(printFilter(tree)).match(value);
          assert.equal(typeof result, 'boolean');
        }),
        { numRuns: 1000 },
      );
    });

    it('negated operators are exact complements', () => {
      const negation = {
        '==': '!=',
        in: 'not in',
        contains: 'not contains',
        exists: 'not exists',
      } as const;
      fc.assert(
        fc.property(smallComparison, entity, (comparison, value) => {
          const op = comparison.operator;
          if (!(op in negation)) return;
          const negated = {
            ...comparison,
            operator: negation[op as keyof typeof negation],
          } as FilterComparison;
          const a = compileFilter(printFilter(comparison)).match(value);
          const b = compileFilter(printFilter(negated)).match(value);
          assert.notEqual(a, b);
        }),
        { numRuns: 1000 },
      );
    });
  });
});
