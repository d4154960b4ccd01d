/**
 * MCP (JSON-RPC) bodies, judged canonically: the body is parsed by a strict parser, judged, and the
 * re-serialization of exactly what was judged is what the upstream receives — never the original bytes.
 *
 * Refused (servers disagree on them): duplicate keys, keys that differ only by case or Unicode compatibility
 * form (`"name"`/`"NAME"`/`"ＮＡＭＥ"`: Go's decoder matches struct fields case-insensitively, last wins), a
 * JSON-RPC member written in another case (`"Method"`), batches inside batches, an empty batch, trailing
 * bytes, invalid UTF-8. Numbers are kept as written (no precision lost on large ids).
 */

/** A parsed JSON value; numbers keep their source text. */
export type Json = null | boolean | string | { num: string } | Json[] | { obj: [string, Json][] };

class Refusal extends Error {}

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
// eslint-disable-next-line no-control-regex -- JSON forbids raw control characters inside strings
const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
const WS = /[ \t\n\r]*/y;
/** The JSON-RPC member names: any other spelling of them is refused. */
const MEMBERS = new Set(['jsonrpc', 'id', 'method', 'params', 'result', 'error', 'name', 'arguments']);

/** Case and compatibility fold: broader than any server's key matching, so nothing two servers read apart passes. */
const fold = (key: string): string => key.normalize('NFKC').toLowerCase().normalize('NFKC');

class Parser {
  i = 0;
  /**
   * Whether the text is its own canonical serialization so far (no whitespace, strings in the escapes
   * JSON.stringify writes): then the judged bytes are forwarded as they are, without a second copy.
   */
  canonical = true;
  readonly text: string;
  /** Lenient: duplicate and case-variant keys are kept, all of them (for reading what any server may read). */
  readonly lenient: boolean;
  constructor(text: string, lenient = false) {
    this.text = text;
    this.lenient = lenient;
  }

  ws(): void {
    WS.lastIndex = this.i;
    WS.exec(this.text);
    if (WS.lastIndex !== this.i) this.canonical = false;
    this.i = WS.lastIndex;
  }

  value(depth: number): Json {
    if (depth > 64) throw new Refusal('nesting deeper than 64');
    this.ws();
    const c = this.text[this.i];
    if (c === '{') return this.object(depth);
    if (c === '[') return this.array(depth);
    if (c === '"') return this.string();
    for (const [word, v] of [
      ['true', true],
      ['false', false],
      ['null', null],
    ] as const) {
      if (this.text.startsWith(word, this.i)) {
        this.i += word.length;
        return v;
      }
    }
    NUMBER.lastIndex = this.i;
    const m = NUMBER.exec(this.text);
    if (!m) throw new Refusal(`invalid JSON at offset ${this.i}`);
    this.i = NUMBER.lastIndex;
    return { num: m[0] };
  }

  string(): string {
    STRING.lastIndex = this.i;
    const m = STRING.exec(this.text);
    if (!m) throw new Refusal(`invalid JSON string at offset ${this.i}`);
    this.i = STRING.lastIndex;
    const source = m[0];
    // Without escapes the value is the text between the quotes (a slice, not a copy of a large argument).
    if (!source.includes('\\')) return source.slice(1, -1);
    const value = JSON.parse(source) as string;
    if (this.canonical && JSON.stringify(value) !== source) this.canonical = false;
    return value;
  }

  object(depth: number): Json {
    this.i++;
    const entries: [string, Json][] = [];
    const seen = new Set<string>();
    this.ws();
    if (this.text[this.i] === '}') {
      this.i++;
      return { obj: entries };
    }
    for (;;) {
      this.ws();
      if (this.text[this.i] !== '"') throw new Refusal(`expected a key at offset ${this.i}`);
      const key = this.string();
      if (!this.lenient) {
        const folded = fold(key);
        if (seen.has(folded)) throw new Refusal(`duplicate or case-variant key ${JSON.stringify(key)}`);
        if (MEMBERS.has(folded) && folded !== key) throw new Refusal(`member ${JSON.stringify(key)} in another case`);
        seen.add(folded);
      }
      this.ws();
      if (this.text[this.i] !== ':') throw new Refusal(`expected : at offset ${this.i}`);
      this.i++;
      entries.push([key, this.value(depth + 1)]);
      this.ws();
      const c = this.text[this.i++];
      if (c === '}') return { obj: entries };
      if (c !== ',') throw new Refusal(`expected , or } at offset ${this.i - 1}`);
    }
  }

  array(depth: number): Json {
    this.i++;
    const items: Json[] = [];
    this.ws();
    if (this.text[this.i] === ']') {
      this.i++;
      return items;
    }
    for (;;) {
      items.push(this.value(depth + 1));
      this.ws();
      const c = this.text[this.i++];
      if (c === ']') return items;
      if (c !== ',') throw new Refusal(`expected , or ] at offset ${this.i - 1}`);
    }
  }
}

/**
 * The members of a JSON object body, every copy of a repeated key kept; undefined when the text is not a JSON
 * object (a server that parses it as JSON fails too).
 */
export function jsonObjectMembers(text: string): [string, Json][] | undefined {
  try {
    const p = new Parser(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text, true);
    const v = p.value(0);
    p.ws();
    if (p.i !== p.text.length) return undefined;
    return v !== null && typeof v === 'object' && 'obj' in v ? v.obj : [];
  } catch (err) {
    if (err instanceof Refusal) return undefined;
    throw err;
  }
}

/** Case and compatibility fold of a key, as broad as any server's matching. */
export const foldKey = (key: string): string => fold(key);

export function serialize(v: Json): string {
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(serialize).join(',')}]`;
  if ('num' in v) return v.num;
  return `{${v.obj.map(([k, x]) => `${JSON.stringify(k)}:${serialize(x)}`).join(',')}}`;
}

const member = (v: Json, key: string): Json | undefined =>
  v !== null && typeof v === 'object' && 'obj' in v ? v.obj.find(([k]) => k === key)?.[1] : undefined;

export type McpVerdict =
  { ok: true; body: Buffer } | { ok: false; reason: 'mcp_message_invalid' | 'mcp_tool_not_allowed'; detail: string };

/**
 * Judges an MCP body against the allowed tools: `tools/call` only for listed tools; other methods pass.
 * Returns the canonical bytes to forward.
 */
export function judgeMcpBody(bytes: Buffer, tools: ReadonlySet<string>): McpVerdict {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(bytes);
  } catch {
    return { ok: false, reason: 'mcp_message_invalid', detail: 'the MCP body is not valid UTF-8' };
  }
  let parsed: Json;
  let canonical: boolean;
  try {
    const p = new Parser(text);
    parsed = p.value(0);
    p.ws();
    if (p.i !== text.length) throw new Refusal(`trailing bytes at offset ${p.i}`);
    // A byte-order mark is dropped by the decoder: such bytes are not the canonical form.
    canonical = p.canonical && bytes[0] !== 0xef;
  } catch (err) {
    if (!(err instanceof Refusal)) throw err;
    return { ok: false, reason: 'mcp_message_invalid', detail: `the MCP body was refused: ${err.message}` };
  }
  const messages = Array.isArray(parsed) ? parsed : [parsed];
  if (messages.length === 0) return { ok: false, reason: 'mcp_message_invalid', detail: 'an empty JSON-RPC batch' };
  for (const m of messages) {
    if (m === null || typeof m !== 'object' || !('obj' in m))
      return {
        ok: false,
        reason: 'mcp_message_invalid',
        detail: Array.isArray(m) ? 'a batch inside a batch' : 'a JSON-RPC message that is not an object',
      };
    const method = member(m, 'method');
    if (method !== 'tools/call') {
      // A lenient server may read another spelling (case, padding) as tools/call: never let it pass unjudged.
      if (typeof method === 'string' && fold(method).replace(/\s/g, '') === 'tools/call')
        return {
          ok: false,
          reason: 'mcp_message_invalid',
          detail: `method ${JSON.stringify(method)} is tools/call in another spelling`,
        };
      continue;
    }
    const name = member(member(m, 'params') ?? null, 'name');
    if (typeof name !== 'string' || !tools.has(name))
      return {
        ok: false,
        reason: 'mcp_tool_not_allowed',
        detail: `tool ${typeof name === 'string' ? name : '(unnamed tool)'} is not in the allowed list`,
      };
  }
  return { ok: true, body: canonical ? bytes : Buffer.from(serialize(parsed)) };
}
