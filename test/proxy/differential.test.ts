/**
 * Raw-bytes differential suite: each case sends exact bytes to the sidecar proxy and records exactly what each
 * of two upstreams received — Node's http server and Go's net/http server, which parse differently. For every
 * case and upstream: no upstream receives a request the policy denies, and what it receives is the request the
 * audit line describes (method, canonical path, checked authority as Host, canonical MCP body).
 */
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditRecord } from '../../sidecar/audit.ts';
import { Matcher } from '../../sidecar/match.ts';
import { judgeMcpBody } from '../../sidecar/mcp.ts';
import {
  buildGo,
  entitlement,
  exchange,
  goUpstream,
  nodeUpstream,
  rule,
  startProxy,
  statuses,
  type RunningProxy,
  type Upstream,
} from '../support/proxy-harness.ts';

let node: Upstream;
let go: Upstream;
let proxy: RunningProxy;
let matcher: Matcher;

beforeAll(async () => {
  const binary = buildGo('go-upstream');
  [node, go] = await Promise.all([nodeUpstream(), goUpstream(binary)]);
  const ports = [node.port, go.port].map((port) => ({ port, protocol: 'TCP' as const }));
  const ent = entitlement([
    rule({
      rule: 'orders',
      hosts: ['orders.test'],
      cidrs: ['127.0.0.1/32'],
      ports,
      http: [
        { methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/v1/orders/' }] },
        { methods: ['POST'], paths: [{ type: 'Exact', value: '/v1/refund-requests' }] },
      ],
    }),
    rule({
      rule: 'mcp',
      hosts: ['mcp.test'],
      cidrs: ['127.0.0.1/32'],
      ports,
      mcp: { path: '/mcp', tools: ['search_issues'] },
    }),
    rule({ rule: 'open', hosts: ['open.test'], cidrs: ['127.0.0.1/32'], ports }),
    rule({ rule: 'v6wide', cidrs: ['::/0'], ports }),
  ]);
  matcher = new Matcher(ent);
  proxy = await startProxy(ent);
}, 300_000);

afterAll(async () => {
  await proxy.close();
  await node.close();
  await go.close();
});

interface Expect {
  /** Status codes the client sees, in order. */
  statuses?: number[];
  /** The first response's reason phrase. */
  phrase?: string;
  /** Exactly what the upstream receives: `METHOD uri`. */
  forwarded: string[];
  /** The body of the (single) forwarded request. */
  body?: string;
  /** Bytes went through a blind tunnel (rule without L7 profile): no per-request audit. */
  blind?: boolean;
}

interface Case {
  name: string;
  host?: string;
  parts: (port: number) => (string | Buffer)[];
  expect: Expect;
}

const CRLF = '\r\n';
const req = (head: string, body = ''): string => `${head.split('\n').join(CRLF)}${CRLF}${CRLF}${body}`;
const chunked = (...chunks: string[]): string =>
  `${chunks.map((c) => `${Buffer.byteLength(c).toString(16)}${CRLF}${c}${CRLF}`).join('')}0${CRLF}${CRLF}`;
const call = (name: string): string => `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"${name}"}}`;
const utf7 = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_issues","na+AG0-e":"x"}}';
const smuggled = (target: string): string =>
  `DELETE ${target} HTTP/1.1${CRLF}host: x${CRLF}content-length: 0${CRLF}${CRLF}`;

/** A request for `host` at the case's upstream port, absolute form, connection closed after. */
const get =
  (host: string, path: string, extra = '', method = 'GET') =>
  (port: number) => [
    req(
      `${method} http://${host}:${port}${path} HTTP/1.1\nhost: ${host}:${port}${extra ? `\n${extra}` : ''}\nconnection: close`,
    ),
  ];
const withBody = (method: string, host: string, path: string, headers: string, body: string) => (port: number) => [
  req(`${method} http://${host}:${port}${path} HTTP/1.1\nhost: ${host}:${port}\n${headers}\nconnection: close`, body),
];
const mcpPost = (body: string, method = 'POST') =>
  withBody(
    method,
    'mcp.test',
    '/mcp',
    `content-type: application/json\ncontent-length: ${Buffer.byteLength(body)}`,
    body,
  );

const tunnelTo = (host: string, inner: (port: number) => (string | Buffer)[]) => (port: number) => [
  req(`CONNECT ${host}:${port} HTTP/1.1\nhost: ${host}:${port}`),
  ...inner(port),
];
const origin =
  (path: string, extra = '', method = 'GET', body = '') =>
  (port: number) => [
    req(
      `${method} ${path} HTTP/1.1\nhost: somewhere.else:${port}${extra ? `\n${extra}` : ''}\nconnection: close`,
      body,
    ),
  ];

const cases: Case[] = [
  // Smuggling and framing: the proxy frames every forwarded message itself.
  {
    name: 'GET with a chunked body hiding a DELETE',
    parts: withBody(
      'GET',
      'orders.test',
      '/v1/orders/1',
      'transfer-encoding: chunked',
      chunked(smuggled('/v1/admin/x')),
    ),
    expect: { statuses: [200], forwarded: ['GET /v1/orders/1'], body: smuggled('/v1/admin/x') },
  },
  {
    name: 'GET whose Connection nominates Content-Length',
    parts: withBody(
      'GET',
      'orders.test',
      '/v1/orders/1',
      `connection: content-length\ncontent-length: ${smuggled('/v1/admin/x').length}`,
      smuggled('/v1/admin/x'),
    ),
    expect: { statuses: [400], phrase: 'bad_connection_header', forwarded: [] },
  },
  {
    name: 'Connection nominating Transfer-Encoding',
    parts: withBody(
      'GET',
      'orders.test',
      '/v1/orders/1',
      'connection: keep-alive, Transfer-Encoding\ntransfer-encoding: chunked',
      chunked(smuggled('/x')),
    ),
    expect: { statuses: [400], phrase: 'bad_connection_header', forwarded: [] },
  },
  {
    name: 'Connection nominating Host',
    parts: get('orders.test', '/v1/orders/1', 'connection: host'),
    expect: { statuses: [400], forwarded: [] },
  },
  {
    name: 'OPTIONS with a chunked body hiding a DELETE',
    host: 'open.test',
    parts: withBody('OPTIONS', 'open.test', '/x', 'transfer-encoding: chunked', chunked(smuggled('/admin'))),
    expect: { statuses: [200], forwarded: ['OPTIONS /x'], body: smuggled('/admin') },
  },
  {
    name: 'DELETE with a chunked body hiding another request',
    host: 'open.test',
    parts: withBody('DELETE', 'open.test', '/x', 'transfer-encoding: chunked', chunked(smuggled('/admin'))),
    expect: { statuses: [200], forwarded: ['DELETE /x'], body: smuggled('/admin') },
  },
  {
    name: 'DELETE with a Content-Length body',
    host: 'open.test',
    parts: withBody('DELETE', 'open.test', '/x', 'content-length: 5', 'hello'),
    expect: { statuses: [200], forwarded: ['DELETE /x'], body: 'hello' },
  },
  {
    name: 'Content-Length and Transfer-Encoding together',
    parts: withBody(
      'POST',
      'orders.test',
      '/v1/refund-requests',
      'content-length: 4\ntransfer-encoding: chunked',
      chunked('abcd'),
    ),
    expect: { statuses: [400], forwarded: [] },
  },
  {
    name: 'two different Content-Length headers',
    parts: withBody('POST', 'orders.test', '/v1/refund-requests', 'content-length: 4\ncontent-length: 5', 'abcde'),
    expect: { statuses: [400], forwarded: [] },
  },
  {
    name: 'Transfer-Encoding other than chunked',
    parts: withBody('POST', 'orders.test', '/v1/refund-requests', 'transfer-encoding: gzip, chunked', chunked('abcd')),
    expect: { statuses: [400], forwarded: [] },
  },
  {
    name: 'Transfer-Encoding with a space before the colon',
    parts: withBody('GET', 'orders.test', '/v1/orders/1', 'transfer-encoding : chunked', chunked(smuggled('/x'))),
    expect: { statuses: [400], forwarded: [] },
  },
  {
    name: 'HEAD with a body',
    parts: withBody('HEAD', 'open.test', '/x', 'content-length: 5', 'hello'),
    host: 'open.test',
    expect: { statuses: [400], phrase: 'body_not_allowed', forwarded: [] },
  },
  {
    name: 'chunk extensions are not forwarded',
    parts: withBody(
      'POST',
      'orders.test',
      '/v1/refund-requests',
      'transfer-encoding: chunked',
      `4;ext="x"${CRLF}abcd${CRLF}0${CRLF}${CRLF}`,
    ),
    expect: { statuses: [200], forwarded: ['POST /v1/refund-requests'], body: 'abcd' },
  },
  {
    name: 'bytes past Content-Length after connection: close are never read',
    parts: withBody('GET', 'orders.test', '/v1/orders/1', 'content-length: 5', `hello${smuggled('/v1/admin/x')}`),
    expect: { statuses: [200], forwarded: ['GET /v1/orders/1'], body: 'hello' },
  },
  {
    name: 'bytes past Content-Length are a second request, judged on its own',
    parts: (port) => [
      req(`GET http://orders.test:${port}/v1/orders/1 HTTP/1.1\nhost: x\ncontent-length: 5`, 'hello') +
        req(`DELETE http://orders.test:${port}/v1/orders/1 HTTP/1.1\nhost: x\nconnection: close`),
    ],
    expect: { statuses: [200, 403], forwarded: ['GET /v1/orders/1'], body: 'hello' },
  },
  {
    name: 'pipelined allowed GET then forbidden DELETE',
    parts: (port) => [
      req(`GET http://orders.test:${port}/v1/orders/1 HTTP/1.1\nhost: orders.test:${port}`) +
        req(`DELETE http://orders.test:${port}/v1/orders/1 HTTP/1.1\nhost: orders.test:${port}\nconnection: close`),
    ],
    expect: { statuses: [200, 403], forwarded: ['GET /v1/orders/1'] },
  },
  {
    name: 'bare LF line endings',
    parts: (port) => [`GET http://orders.test:${port}/v1/orders/1 HTTP/1.1\nhost: orders.test\nconnection: close\n\n`],
    expect: { forwarded: [] },
  },
  {
    name: 'obs-fold header continuation',
    parts: get('orders.test', '/v1/orders/1', 'x-a: 1\r\n  continued'),
    expect: { statuses: [400], forwarded: [] },
  },
  {
    name: 'NUL in a header value',
    parts: get('orders.test', '/v1/orders/1', 'x-a: a\u0000b'),
    expect: { statuses: [400], forwarded: [] },
  },
  // Host: the checked authority, never the client's.
  {
    name: 'Host header naming another virtual host',
    parts: (port) => [
      req(`GET http://orders.test:${port}/v1/orders/1 HTTP/1.1\nhost: admin.internal\nconnection: close`),
    ],
    expect: { statuses: [200], forwarded: ['GET /v1/orders/1'] },
  },
  {
    name: 'duplicate Host headers',
    parts: (port) => [
      req(`GET http://orders.test:${port}/v1/orders/1 HTTP/1.1\nhost: a.test\nhost: b.test\nconnection: close`),
    ],
    expect: { statuses: [200], forwarded: ['GET /v1/orders/1'] },
  },
  {
    name: 'upper-case host with a trailing dot',
    parts: (port) => [req(`GET http://ORDERS.TEST.:${port}/v1/orders/1 HTTP/1.1\nhost: x\nconnection: close`)],
    expect: { statuses: [200], forwarded: ['GET /v1/orders/1'] },
  },
  {
    name: 'userinfo in the target',
    parts: (port) => [req(`GET http://admin@orders.test:${port}/v1/orders/1 HTTP/1.1\nhost: x\nconnection: close`)],
    expect: { statuses: [400], forwarded: [] },
  },
  {
    name: 'fragment in the target is refused, not forwarded as a query',
    parts: get('orders.test', '/v1/orders/1#x'),
    expect: { statuses: [400], phrase: 'malformed_target', forwarded: [] },
  },
  {
    name: 'fragment right after the authority (refused by the parser)',
    host: 'open.test',
    parts: (port) => [req(`GET http://open.test:${port}#/x HTTP/1.1\nhost: x\nconnection: close`)],
    expect: { statuses: [400], forwarded: [] },
  },
  {
    name: 'plain HTTP inside a CONNECT: fragment in the target',
    parts: tunnelTo('orders.test', origin('/v1/orders/1#frag')),
    expect: { statuses: [200, 400], forwarded: [] },
  },
  {
    name: 'a second Content-Type hiding a form _method=DELETE',
    parts: withBody(
      'POST',
      'orders.test',
      '/v1/refund-requests',
      'content-type: text/plain\ncontent-type: application/x-www-form-urlencoded\ncontent-length: 14',
      '_method=DELETE',
    ),
    expect: { statuses: [400], phrase: 'duplicate_header', forwarded: [] },
  },
  {
    name: 'two Authorization headers',
    host: 'open.test',
    parts: get('open.test', '/x', 'authorization: Bearer a\nAuthorization: Bearer b'),
    expect: { statuses: [400], phrase: 'duplicate_header', forwarded: [] },
  },
  ...(
    [
      ['a JSON body claiming _method: DELETE (Laravel)', 'application/json', '{"_method":"DELETE","amount":5}'],
      ['an escaped _method key in JSON', 'application/json; charset=utf-8', '{"\\u005fmethod":"delete"}'],
      [
        'a repeated _method key in JSON (last wins upstream)',
        'application/json',
        '{"_method":"POST","_method":"DELETE"}',
      ],
      ['a +json media type claiming _method', 'application/vnd.api+json', '{"_METHOD":"PUT"}'],
      ['JSON that is not JSON to the proxy but names a method', 'application/json', '{"_method":"DELETE",}'],
    ] as const
  ).map(([name, type, body]): Case => ({
    name,
    parts: withBody(
      'POST',
      'orders.test',
      '/v1/refund-requests',
      `content-type: ${type}\ncontent-length: ${Buffer.byteLength(body)}`,
      body,
    ),
    expect: { statuses: [403], phrase: 'method_override_not_allowed', forwarded: [] },
  })),
  {
    name: 'a JSON body whose _method claims an allowed method: forwarded as sent',
    parts: withBody(
      'POST',
      'orders.test',
      '/v1/refund-requests',
      'content-type: application/json\ncontent-length: 30',
      '{"_method":"POST", "order": 7}',
    ),
    expect: { statuses: [200], forwarded: ['POST /v1/refund-requests'], body: '{"_method":"POST", "order": 7}' },
  },
  {
    name: 'a JSON body under a rule without an HTTP profile is not read for overrides',
    host: 'open.test',
    parts: withBody(
      'POST',
      'open.test',
      '/x',
      'content-type: application/json\ncontent-length: 20',
      '{"_method":"DELETE"}',
    ),
    expect: { statuses: [200], forwarded: ['POST /x'], body: '{"_method":"DELETE"}' },
  },
  {
    name: 'a form body in UTF-16 claiming _method=DELETE',
    parts: (port) => {
      const body = Buffer.from('_method=DELETE', 'utf16le');
      const head = `POST http://orders.test:${port}/v1/refund-requests HTTP/1.1\nhost: x\ncontent-type: application/x-www-form-urlencoded; charset=utf-16le\ncontent-length: ${body.length}\nconnection: close`;
      return [Buffer.concat([Buffer.from(req(head)), body])];
    },
    expect: { statuses: [403], phrase: 'method_override_not_allowed', forwarded: [] },
  },
  {
    name: 'origin-form request (not a proxy request)',
    parts: origin('/v1/orders/1'),
    expect: { statuses: [400], phrase: 'not_a_proxy_request', forwarded: [] },
  },
  // Paths: canonical form judged and forwarded; ambiguous encodings refused.
  ...(
    [
      ['/v1/orders/%2e%2e/admin', 'encoded dot segment'],
      ['/v1/orders/.%2E/admin', 'mixed dot segment'],
      ['/v1/orders/%252e%252e/admin', 'double-encoded dots'],
      ['/v1/orders/..%2Fadmin', 'encoded slash'],
      ['/v1/orders/a%2fb', 'lower-case encoded slash'],
      ['/v1/orders/a%5Cb', 'encoded backslash'],
      ['/v1/orders/..;/admin', 'dot segment with parameters'],
      ['/v1/orders/a%00b', 'encoded NUL'],
      ['/v1/orders/a%zzb', 'invalid percent-encoding'],
      ['/v1/orders/a%25%32%65', 'encoded percent followed by encoded hex'],
      ['/v1/orders/..%3B/admin', 'dot segment with an encoded parameter delimiter'],
      ['/v1/orders/.%3bx/1', 'dot segment with an encoded lower-case parameter delimiter'],
      ['/v1/orders/%C0%AE%C0%AE/admin', 'overlong UTF-8 dots'],
      ['/v1/orders/%e0%80%ae%e0%80%ae/admin', 'three-byte overlong UTF-8 dots'],
      ['/v1/orders/%C0%AF', 'overlong UTF-8 slash'],
      ['/v1/orders/%FF', 'a byte that is never UTF-8'],
    ] as const
  ).map(([path, name]): Case => ({
    name: `path: ${name} (${path})`,
    parts: get('orders.test', path),
    expect: { statuses: [400], phrase: 'ambiguous_path', forwarded: [] },
  })),
  ...(
    [
      ['/v1/orders/my%20report.pdf', '/v1/orders/my%20report.pdf'],
      ['/v1/orders/caf%c3%a9', '/v1/orders/caf%C3%A9'],
      ['/v1/orders/a%3Fb?x=1', '/v1/orders/a%3Fb?x=1'],
      ['/v1/orders/a%23b', '/v1/orders/a%23b'],
      ['/v1/orders/./1', '/v1/orders/1'],
      ['//v1//orders//1', '/v1/orders/1'],
      ['/v1/orders/%7E1', '/v1/orders/~1'],
      ['/v1/orders/x/../1', '/v1/orders/1'],
      ['/v1/orders/100%25', '/v1/orders/100%25'],
      ['/v1/orders/1?q="a"&b=%2f', '/v1/orders/1?q=%22a%22&b=%2F'],
      ['/v1/orders/a%3Bb', '/v1/orders/a%3Bb'],
    ] as const
  ).map(([path, forwarded]): Case => ({
    name: `path forwarded canonically: ${path}`,
    parts: get('orders.test', path),
    expect: { statuses: [200], forwarded: [`GET ${forwarded}`] },
  })),
  {
    name: 'dot segments leaving the allowed prefix',
    parts: get('orders.test', '/v1/orders/../admin'),
    expect: { statuses: [403], phrase: 'path_not_allowed', forwarded: [] },
  },
  {
    name: 'case-changed path',
    parts: get('orders.test', '/V1/orders/1'),
    expect: { statuses: [403], forwarded: [] },
  },
  // Method overrides are judged as the method they claim.
  {
    name: 'X-HTTP-Method-Override: DELETE under a GET rule',
    parts: get('orders.test', '/v1/orders/1', 'x-http-method-override: DELETE'),
    expect: { statuses: [403], phrase: 'method_override_not_allowed', forwarded: [] },
  },
  {
    name: 'X-Method-Override: delete (lower case)',
    parts: get('orders.test', '/v1/orders/1', 'x-method-override: delete'),
    expect: { statuses: [403], forwarded: [] },
  },
  {
    name: '_method=DELETE in the query',
    parts: get('orders.test', '/v1/orders/1?_method=DELETE'),
    expect: { statuses: [403], phrase: 'method_override_not_allowed', forwarded: [] },
  },
  ...(['?%5F%6Dethod=DELETE', '?a=1;_method=DELETE', '?_Method=delete', '?%5f%6d%65%74%68%6f%64=PUT'] as const).map(
    (query): Case => ({
      name: `_method spelled in the query as ${query}`,
      parts: get('orders.test', `/v1/orders/1${query}`),
      expect: { statuses: [403], phrase: 'method_override_not_allowed', forwarded: [] },
    }),
  ),
  {
    name: 'an override claiming an allowed method',
    parts: get('orders.test', '/v1/orders/1', 'x-http-method-override: GET'),
    expect: { statuses: [200], forwarded: ['GET /v1/orders/1'] },
  },
  {
    name: 'an override under a rule without an HTTP profile',
    host: 'open.test',
    parts: get('open.test', '/x', 'x-http-method-override: DELETE'),
    expect: { statuses: [200], forwarded: ['GET /x'] },
  },
  {
    name: 'a form body claiming _method=DELETE',
    parts: withBody(
      'POST',
      'orders.test',
      '/v1/refund-requests',
      'content-type: application/x-www-form-urlencoded\ncontent-length: 22',
      'a=1&_method=DELETE&b=2',
    ),
    expect: { statuses: [403], phrase: 'method_override_not_allowed', forwarded: [] },
  },
  {
    name: 'a form body claiming %5Fmethod=delete (encoded key)',
    parts: withBody(
      'POST',
      'orders.test',
      '/v1/refund-requests',
      'content-type: application/x-www-form-urlencoded; charset=utf-8\ntransfer-encoding: chunked',
      chunked('%5Fmethod=delete'),
    ),
    expect: { statuses: [403], forwarded: [] },
  },
  {
    name: 'a multipart form with a _method field',
    parts: withBody(
      'POST',
      'orders.test',
      '/v1/refund-requests',
      'content-type: multipart/form-data; boundary=XX\ncontent-length: 62',
      '--XX\r\ncontent-disposition: form-data; name="_method"\r\n\r\nDELETE',
    ),
    expect: { statuses: [403], forwarded: [] },
  },
  {
    name: 'a form body without an override: the judged bytes are forwarded',
    parts: withBody(
      'POST',
      'orders.test',
      '/v1/refund-requests',
      'content-type: application/x-www-form-urlencoded\ntransfer-encoding: chunked',
      chunked('a=1&', 'method=x'),
    ),
    expect: { statuses: [200], forwarded: ['POST /v1/refund-requests'], body: 'a=1&method=x' },
  },
  // MCP: parsed strictly, judged, forwarded canonically, whatever the method.
  {
    name: 'MCP allowed tool, formatted: forwarded canonically',
    host: 'mcp.test',
    parts: mcpPost(` { "jsonrpc":"2.0", "id":7, "method":"tools/call", "params":{"name":"search_issues"} }`),
    expect: {
      statuses: [200],
      forwarded: ['POST /mcp'],
      body: '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_issues"}}',
    },
  },
  ...(
    [
      [
        'case-variant NAME',
        '{"method":"tools/call","params":{"name":"search_issues","NAME":"delete_repo"}}',
        'mcp_message_invalid',
      ],
      [
        'duplicate name',
        '{"method":"tools/call","params":{"name":"search_issues","name":"delete_repo"}}',
        'mcp_message_invalid',
      ],
      [
        'Method variant',
        '{"method":"tools/list","Method":"tools/call","params":{"name":"delete_repo"}}',
        'mcp_message_invalid',
      ],
      ['METHOD only', '{"METHOD":"tools/call","params":{"name":"delete_repo"}}', 'mcp_message_invalid'],
      ['nested batch', `[[${call('delete_repo')}]]`, 'mcp_message_invalid'],
      ['batch with a forbidden call', `[${call('search_issues')},${call('delete_repo')}]`, 'mcp_tool_not_allowed'],
      ['forbidden tool', call('delete_repo'), 'mcp_tool_not_allowed'],
      ['invalid JSON', '{"method":', 'mcp_message_invalid'],
    ] as const
  ).map(([name, body, reason]): Case => ({
    name: `MCP POST: ${name}`,
    host: 'mcp.test',
    parts: mcpPost(body),
    expect: { statuses: [403], phrase: reason, forwarded: [] },
  })),
  ...(['GET', 'PUT', 'PATCH', 'DELETE'] as const).map((method): Case => ({
    name: `MCP ${method} with a forbidden call in its body`,
    host: 'mcp.test',
    parts: mcpPost(call('delete_repo'), method),
    expect: { statuses: [403], phrase: 'mcp_tool_not_allowed', forwarded: [] },
  })),
  {
    name: 'MCP GET with a chunked forbidden call',
    host: 'mcp.test',
    parts: withBody('GET', 'mcp.test', '/mcp', 'transfer-encoding: chunked', chunked(call('delete_repo'))),
    expect: { statuses: [403], forwarded: [] },
  },
  {
    name: 'MCP chunked allowed call: forwarded with a length',
    host: 'mcp.test',
    parts: withBody(
      'POST',
      'mcp.test',
      '/mcp',
      'transfer-encoding: chunked',
      chunked(call('search_issues').slice(0, 60), call('search_issues').slice(60)),
    ),
    expect: { statuses: [200], forwarded: ['POST /mcp'], body: call('search_issues') },
  },
  {
    name: 'MCP gzip-encoded body (cannot be judged)',
    host: 'mcp.test',
    parts: (port) => {
      const gz = gzipSync(call('delete_repo'));
      const head = `POST http://mcp.test:${port}/mcp HTTP/1.1\nhost: x\ncontent-encoding: gzip\ncontent-length: ${gz.length}\nconnection: close`;
      return [Buffer.concat([Buffer.from(req(head)), gz])];
    },
    expect: { statuses: [403], phrase: 'mcp_message_invalid', forwarded: [] },
  },
  ...(['Tools/Call', 'TOOLS/CALL', 'tools/call ', ' tools/call', 'tools/\\u0043all'] as const).map((method): Case => ({
    name: `MCP method spelled ${JSON.stringify(method)} with a forbidden tool`,
    host: 'mcp.test',
    parts: mcpPost(`{"jsonrpc":"2.0","id":1,"method":"${method}","params":{"name":"delete_repo"}}`),
    expect: { statuses: [403], phrase: 'mcp_message_invalid', forwarded: [] },
  })),
  {
    name: 'MCP body in UTF-7 whose +-encoded key is "name" to a UTF-7 reader',
    host: 'mcp.test',
    parts: withBody(
      'POST',
      'mcp.test',
      '/mcp',
      `content-type: application/json; charset=utf-7\ncontent-length: ${utf7.length}`,
      utf7,
    ),
    expect: { statuses: [403], phrase: 'mcp_message_invalid', forwarded: [] },
  },
  {
    name: 'MCP plain JSON labelled with a content coding',
    host: 'mcp.test',
    parts: withBody(
      'POST',
      'mcp.test',
      '/mcp',
      `content-type: application/json\ncontent-encoding: deflate\ncontent-length: ${call('search_issues').length}`,
      call('search_issues'),
    ),
    expect: { statuses: [403], phrase: 'mcp_message_invalid', forwarded: [] },
  },
  {
    name: 'MCP allowed tool with charset=utf-8: forwarded',
    host: 'mcp.test',
    parts: withBody(
      'POST',
      'mcp.test',
      '/mcp',
      `content-type: application/json; charset=UTF-8\ncontent-length: ${call('search_issues').length}`,
      call('search_issues'),
    ),
    expect: { statuses: [200], forwarded: ['POST /mcp'], body: call('search_issues') },
  },
  {
    name: 'MCP GET without a body (event stream)',
    host: 'mcp.test',
    parts: get('mcp.test', '/mcp', 'accept: text/event-stream'),
    expect: { statuses: [200], forwarded: ['GET /mcp'] },
  },
  {
    name: 'MCP path written with an encoded unreserved character',
    host: 'mcp.test',
    parts: withBody('POST', 'mcp.test', '/%6Dcp', `content-length: ${call('delete_repo').length}`, call('delete_repo')),
    expect: { statuses: [403], forwarded: [] },
  },
  // Expect: 100-continue is answered only after the decision.
  {
    name: 'Expect: 100-continue on a denied path gets 403 and no 100',
    parts: (port) => [
      req(
        `POST http://orders.test:${port}/v1/admin HTTP/1.1\nhost: x\nexpect: 100-continue\ncontent-length: 5\nconnection: close`,
      ),
    ],
    expect: { statuses: [403], forwarded: [] },
  },
  {
    name: 'Expect: 100-continue on an allowed path gets 100, then the answer',
    parts: (port) => [
      req(
        `POST http://orders.test:${port}/v1/refund-requests HTTP/1.1\nhost: x\nexpect: 100-continue\ncontent-length: 5\nconnection: close`,
      ),
      'hello',
    ],
    expect: { statuses: [100, 200], forwarded: ['POST /v1/refund-requests'], body: 'hello' },
  },
  // Upgrades are judged by the policy.
  {
    name: 'WebSocket upgrade under a rule with an HTTP profile',
    parts: get('orders.test', '/v1/orders/ws', 'connection: upgrade\nupgrade: websocket'),
    expect: { statuses: [403], phrase: 'upgrade_needs_rule_without_l7', forwarded: [] },
  },
  {
    name: 'upgrade to a destination without a rule',
    parts: get('nothing.test', '/', 'connection: upgrade\nupgrade: websocket'),
    expect: { statuses: [403], phrase: 'no_rule_for_destination', forwarded: [] },
  },
  // IPv4 inside IPv6, under a ::/0 grant.
  ...['[::ffff:127.0.0.1]', '[::ffff:7f00:1]', '[64:ff9b::7f00:1]', '[::127.0.0.1]', '[2002:7f00:1::]'].map(
    (host): Case => ({
      name: `IPv4-embedding literal ${host}`,
      parts: get(host, '/'),
      expect: { statuses: [403], phrase: 'private_address', forwarded: [] },
    }),
  ),
  {
    name: 'CONNECT to an IPv4-mapped loopback',
    parts: (port) => [req(`CONNECT [::ffff:127.0.0.1]:${port} HTTP/1.1\nhost: x`)],
    expect: { statuses: [403], phrase: 'private_address', forwarded: [] },
  },
  // CONNECT: reason phrase, blind tunnels, inspected tunnels.
  {
    name: 'CONNECT without a rule: the reason is in the status line',
    parts: (port) => [req(`CONNECT nothing.test:${port} HTTP/1.1\nhost: x`)],
    expect: { statuses: [403], phrase: 'no_rule_for_destination', forwarded: [] },
  },
  {
    name: 'blind tunnel under a rule without a profile',
    host: 'open.test',
    parts: tunnelTo('open.test', () => [req('GET /anything HTTP/1.1\nhost: open.test\nconnection: close')]),
    expect: { statuses: [200, 200], forwarded: ['GET /anything'], blind: true },
  },
  {
    name: 'plain HTTP inside a CONNECT to an L7 destination: allowed request',
    parts: tunnelTo('orders.test', origin('/v1/orders/1')),
    expect: { statuses: [200, 200], forwarded: ['GET /v1/orders/1'] },
  },
  {
    name: 'plain HTTP inside a CONNECT: forbidden method',
    parts: tunnelTo('orders.test', origin('/v1/orders/1', '', 'DELETE')),
    expect: { statuses: [200, 403], forwarded: [] },
  },
  {
    name: 'plain HTTP inside a CONNECT: ambiguous path',
    parts: tunnelTo('orders.test', origin('/v1/orders/%2e%2e/admin')),
    expect: { statuses: [200, 400], forwarded: [] },
  },
  {
    name: 'plain HTTP inside a CONNECT: chunked GET hiding a DELETE',
    parts: tunnelTo(
      'orders.test',
      origin('/v1/orders/1', 'transfer-encoding: chunked', 'GET', chunked(smuggled('/v1/admin'))),
    ),
    expect: { statuses: [200, 200], forwarded: ['GET /v1/orders/1'], body: smuggled('/v1/admin') },
  },
  {
    name: 'plain HTTP inside a CONNECT: pipelined allowed and forbidden',
    parts: tunnelTo('orders.test', (port) => [
      req(`GET /v1/orders/1 HTTP/1.1\nhost: orders.test:${port}`) +
        req(`GET /v1/admin HTTP/1.1\nhost: orders.test:${port}\nconnection: close`),
    ]),
    expect: { statuses: [200, 200, 403], forwarded: ['GET /v1/orders/1'] },
  },
  {
    name: 'plain HTTP inside a CONNECT: absolute form for another host',
    parts: tunnelTo('orders.test', (port) => [
      req(`GET http://open.test:${port}/x HTTP/1.1\nhost: open.test\nconnection: close`),
    ]),
    expect: { statuses: [200, 400], forwarded: [] },
  },
  {
    name: 'plain HTTP inside a CONNECT to an MCP destination: forbidden tool',
    host: 'mcp.test',
    parts: tunnelTo(
      'mcp.test',
      origin(
        '/mcp',
        `content-type: application/json\ncontent-length: ${call('delete_repo').length}`,
        'POST',
        call('delete_repo'),
      ),
    ),
    expect: { statuses: [200, 403], forwarded: [] },
  },
  {
    name: 'plain HTTP inside a CONNECT to an MCP destination: allowed tool',
    host: 'mcp.test',
    parts: tunnelTo(
      'mcp.test',
      origin(
        '/mcp',
        `content-type: application/json\ncontent-length: ${call('search_issues').length}`,
        'POST',
        call('search_issues'),
      ),
    ),
    expect: { statuses: [200, 200], forwarded: ['POST /mcp'], body: call('search_issues') },
  },
  {
    name: 'TLS inside a CONNECT to an L7 destination is refused',
    parts: tunnelTo('orders.test', () => [Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])]),
    expect: { statuses: [200], forwarded: [] },
  },
  {
    name: 'binary garbage inside a CONNECT to an L7 destination is refused',
    parts: tunnelTo('orders.test', () => [Buffer.from([0x00, 0x01, 0x02, 0x03])]),
    expect: { statuses: [200], forwarded: [] },
  },
  {
    name: 'CONNECT inside an inspected tunnel',
    parts: tunnelTo('orders.test', (port) => [req(`CONNECT open.test:${port} HTTP/1.1\nhost: x`)]),
    expect: { statuses: [200], forwarded: [] },
  },
];

/** Every audit line written since `from`. */
const since = (from: number): AuditRecord[] => proxy.audits.slice(from);

describe.each(['node', 'go'] as const)('differential: %s upstream', (which) => {
  it('has at least 60 cases', () => expect(cases.length).toBeGreaterThanOrEqual(60));

  it.each(cases.map((c) => [c.name, c] as const))('%s', async (_, c) => {
    const up = which === 'node' ? node : go;
    const host = c.host ?? 'orders.test';
    const before = up.received.length;
    const auditFrom = proxy.audits.length;
    const raw = await exchange(proxy.port, c.parts(up.port));
    await up.sync();
    const got = up.received.slice(before);
    const audits = since(auditFrom);

    if (c.expect.statuses) expect(statuses(raw)).toEqual(c.expect.statuses);
    if (c.expect.phrase) expect(raw).toMatch(new RegExp(`^HTTP/1\\.1 \\d{3} ${c.expect.phrase}\\r\\n`));
    if (raw.includes('HTTP/1.1 100 Continue')) expect(raw.startsWith('HTTP/1.1 100 Continue')).toBe(true);
    expect(got.map((r) => `${r.method} ${r.uri}`)).toEqual(c.expect.forwarded);
    if (c.expect.body !== undefined) expect(got[0]?.body).toBe(c.expect.body);

    for (const r of got) {
      if (c.expect.blind) {
        expect(audits.some((a) => a.method === 'CONNECT' && a.decision === 'allow' && a.rule === 'open')).toBe(true);
        continue;
      }
      const path = r.uri.split('?')[0] ?? '';
      // The upstream got the checked authority as Host, and no framing of the client's.
      expect(r.host).toBe(`${host}:${up.port}`);
      expect(r.headers['agentfence-identity']).toBeUndefined();
      // What it got is what the audit line describes, and what the policy allows.
      const line = audits.find((a) => a.decision === 'allow' && a.method === r.method && a.path === path);
      expect(line, `audit line for ${r.method} ${r.uri}`).toMatchObject({
        host,
        port: up.port,
        bytesIn: Buffer.byteLength(r.body),
      });
      const decision = matcher.decideHttp({ method: r.method, host, port: up.port, path }, Date.now());
      expect(decision.allow).toBe(true);
      if (decision.allow && decision.rule.mcp && r.body !== '') {
        const verdict = judgeMcpBody(Buffer.from(r.body), decision.rule.mcp.tools);
        expect(verdict.ok).toBe(true);
        if (verdict.ok) expect(verdict.body.toString()).toBe(r.body);
      }
    }
    // Every refusal is audited too (except targets without a host).
    if (statuses(raw).some((s) => s === 403)) expect(audits.some((a) => a.decision === 'deny')).toBe(true);
  });
});
