import { describe, expect, it } from 'vitest';
import { judgeMcpBody } from '../../sidecar/mcp.ts';

const tools = new Set(['search_issues', 'get_issue']);
const judge = (body: string) => judgeMcpBody(Buffer.from(body), tools);
const call = (name: string) => `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"${name}"}}`;

describe('MCP bodies, judged canonically', () => {
  it('allows listed tools and non-call methods, refuses others, checks batches element-wise', () => {
    expect(judge(call('search_issues'))).toMatchObject({ ok: true });
    expect(judge('{"jsonrpc":"2.0","id":1,"method":"tools/list"}')).toMatchObject({ ok: true });
    expect(judge(call('delete_repo'))).toMatchObject({ ok: false, reason: 'mcp_tool_not_allowed' });
    expect(judge(`[${call('get_issue')},${call('merge_pr')}]`)).toMatchObject({
      ok: false,
      detail: expect.stringContaining('merge_pr') as unknown,
    });
    expect(judge('{"method":"tools/call","params":{}}')).toMatchObject({ ok: false, reason: 'mcp_tool_not_allowed' });
  });

  it.each([
    ['duplicate key', '{"method":"tools/call","params":{"name":"get_issue","name":"merge_pr"}}'],
    ['case-variant key', '{"method":"tools/call","params":{"name":"get_issue","NAME":"merge_pr"}}'],
    ['case-variant method', '{"method":"tools/list","Method":"tools/call","params":{"name":"merge_pr"}}'],
    ['member in another case only', '{"METHOD":"tools/call","params":{"name":"merge_pr"}}'],
    ['escaped duplicate', '{"method":"tools/call","params":{"name":"get_issue","na\\u006de":"merge_pr"}}'],
    ['fullwidth variant', '{"method":"tools/call","params":{"name":"get_issue","\uff4e\uff41\uff4d\uff45":"x"}}'],
    ['long-s variant of params', '{"method":"tools/call","params":{"name":"get_issue"},"param\u017f":{"name":"x"}}'],
    ['duplicate in an unrelated object', '{"method":"tools/list","params":{"a":1,"a":2}}'],
    ['nested batch', `[[${call('merge_pr')}]]`],
    ['empty batch', '[]'],
    ['not an object', '"tools/call"'],
    ['trailing bytes', `${call('get_issue')}${call('merge_pr')}`],
    ['invalid JSON', '{"method":'],
    ['single quotes', "{'method':'tools/call'}"],
    ['comment', '{"method":"tools/list"/*x*/}'],
  ])('refuses %s', (_, body) => expect(judge(body)).toMatchObject({ ok: false }));

  it('refuses invalid UTF-8', () => {
    const bytes = Buffer.concat([
      Buffer.from('{"method":"tools/list","x":"'),
      Buffer.from([0xc3, 0x28]),
      Buffer.from('"}'),
    ]);
    expect(judgeMcpBody(bytes, tools)).toMatchObject({ ok: false, reason: 'mcp_message_invalid' });
  });

  it('forwards the canonical serialization of what was judged, numbers as written', () => {
    const v = judge(
      ' { "jsonrpc" : "2.0", "id" : 12345678901234567890123, "method":"tools/call", "params":{"name":"get_\\u0069ssue","arguments":{"n":1.50e3}} } ',
    );
    expect(v.ok).toBe(true);
    if (!v.ok) return;
    expect(v.body.toString()).toBe(
      '{"jsonrpc":"2.0","id":12345678901234567890123,"method":"tools/call","params":{"name":"get_issue","arguments":{"n":1.50e3}}}',
    );
  });

  it('forwards bytes that are already canonical as they are (no second copy of a large body)', () => {
    const bytes = Buffer.from(call('get_issue').replace('}}', `,"arguments":{"q":"${'x'.repeat(100_000)}"}}}`));
    const v = judgeMcpBody(bytes, tools);
    expect(v).toMatchObject({ ok: true });
    if (v.ok) expect(v.body).toBe(bytes);
    // Not canonical: whitespace, an escape JSON.stringify would not write, a byte-order mark.
    for (const body of [
      Buffer.from(`${call('get_issue')} `),
      Buffer.from('{"method":"tools/list","x":"a\\/b"}'),
      Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(call('get_issue'))]),
    ]) {
      const w = judgeMcpBody(body, tools);
      expect(w).toMatchObject({ ok: true });
      if (w.ok) {
        expect(w.body).not.toBe(body);
        expect(w.body.toString()).toBe(JSON.stringify(JSON.parse(body.toString().replace(/^\uFEFF/, ''))));
      }
    }
  });

  it.each(['Tools/Call', 'TOOLS/CALL', 'tools/call ', '\ttools/call', 'tools/ call'])(
    'refuses method %j, tools/call in another spelling',
    (method) =>
      expect(
        judge(`{"jsonrpc":"2.0","id":1,"method":${JSON.stringify(method)},"params":{"name":"merge_pr"}}`),
      ).toMatchObject({
        ok: false,
        reason: 'mcp_message_invalid',
      }),
  );

  it('refuses absurd nesting without overflowing the stack', () => {
    expect(judge(`${'['.repeat(10_000)}${']'.repeat(10_000)}`)).toMatchObject({ ok: false });
  });
});
