import { describe, expect, it } from 'vitest';
import {
  canonicalAuthority,
  canonicalPath,
  canonicalQuery,
  endToEnd,
  parseAbsoluteHttp,
  queryOverridesMethod,
  requestHead,
} from '../../sidecar/canonical.ts';
import { formOverrides } from '../../sidecar/pipeline.ts';

describe('canonical path', () => {
  it.each([
    ['/a/b', '/a/b'],
    ['/a//b/', '/a/b/'],
    ['/a/./b/../c', '/a/c'],
    ['/../../x', '/x'],
    ['/', '/'],
    ['/files/my%20report.pdf', '/files/my%20report.pdf'],
    ['/caf%c3%a9', '/caf%C3%A9'],
    ['/a%3Fb%23c', '/a%3Fb%23c'],
    ['/%7Euser/%41', '/~user/A'],
    ['/a%3bb', '/a%3Bb'],
    ['/100%25', '/100%25'],
    ['/100%25done', '/100%25done'],
    ['/a"b<c>{d}|e^`', '/a%22b%3Cc%3E%7Bd%7D%7Ce%5E%60'],
    ['/caf\u00c3\u00a9', '/caf%C3%A9'],
    ['/file%2etxt', '/file.txt'],
    ['/a/...', '/a/...'],
    ['/a;v=1/b', '/a;v=1/b'],
  ])('%s → %s', (raw, canonical) => expect(canonicalPath(raw)).toBe(canonical));

  it.each([
    ['/a%2Fb', 'separator'],
    ['/a%2fb', 'separator'],
    ['/a%5Cb', 'separator'],
    ['/a\\b', 'backslash'],
    ['/a/%2e%2e/b', 'encoded dot'],
    ['/a/%2E/b', 'encoded dot'],
    ['/a/.%2e/b', 'encoded dot'],
    ['/a/%252e%252e/b', 'double'],
    ['/a%252Fb', 'double'],
    ['/a/..;/b', 'parameters'],
    ['/a/.;x/b', 'parameters'],
    ['/a%00b', 'control'],
    ['/a%0d%0ab', 'control'],
    ['/a%zz', 'hex'],
    ['/a%4', 'hex'],
    ['/a/..%3B/b', 'parameters'],
    ['/a/.%3bx/b', 'parameters'],
    ['/a/%C0%AE%C0%AE/b', 'UTF-8'],
    ['/a/%e0%80%ae/b', 'UTF-8'],
    ['/a/%ED%A0%80', 'UTF-8'],
    ['/caf\u00e9', 'UTF-8'],
  ])('%s is refused as ambiguous_path (%s)', (raw, why) => {
    const c = canonicalPath(raw);
    expect(c).toMatchObject({ error: 'ambiguous_path' });
    expect(JSON.stringify(c)).toMatch(new RegExp(why === 'hex' ? 'hex digits' : why, 'i'));
  });

  it('refuses relative paths and control characters as malformed', () => {
    expect(canonicalPath('a/b')).toMatchObject({ error: 'malformed_target' });
    expect(canonicalPath('/a\u0001')).toMatchObject({ error: 'malformed_target' });
    expect(canonicalPath('/a#frag')).toMatchObject({ error: 'malformed_target' });
  });

  it('is idempotent: the canonical form of a canonical path is itself', () => {
    for (const raw of ['/a/%20b/c%C3%A9', '/x/%3F/%23/~', '/100%25', '/a/../b/./c/']) {
      const once = canonicalPath(raw) as string;
      expect(canonicalPath(once)).toBe(once);
    }
  });
});

describe('canonical query and target', () => {
  it('keeps the query, upper-cases encodings, encodes what may not be raw, refuses fragments', () => {
    expect(canonicalQuery('')).toBe('');
    expect(canonicalQuery('?a=1&b=%2f')).toBe('?a=1&b=%2F');
    expect(canonicalQuery('?q=100%')).toBe('?q=100%25');
    expect(canonicalQuery('?q=a b')).toBe('?q=a%20b');
    expect(canonicalQuery('?q=a#f')).toMatchObject({ error: 'malformed_target' });
  });
  it('finds _method overrides', () => {
    expect(queryOverridesMethod('?_method=DELETE')).toBe(true);
    expect(queryOverridesMethod('?x=1&_METHOD=DELETE')).toBe(true);
    expect(queryOverridesMethod('?%5Fmethod=DELETE')).toBe(true);
    expect(queryOverridesMethod('?method=x')).toBe(false);
  });
  it('parses absolute-form targets', () => {
    expect(parseAbsoluteHttp('http://a.example:8080/x?y')).toEqual({
      host: 'a.example',
      port: 8080,
      path: '/x',
      query: '?y',
    });
    expect(parseAbsoluteHttp('HTTP://a.example?y')).toEqual({ host: 'a.example', port: 80, path: '/', query: '?y' });
    expect(parseAbsoluteHttp('http://[::1]:81/')).toMatchObject({ host: '[::1]', port: 81 });
    expect(parseAbsoluteHttp('http://u@a.example/')).toBeUndefined();
    expect(parseAbsoluteHttp('http://a.example:+80/')).toBeUndefined();
    expect(parseAbsoluteHttp('https://a.example/')).toBeUndefined();
  });
  it('writes the authority with IPv6 brackets and without the default port', () => {
    expect(canonicalAuthority('::1', 80)).toBe('[::1]');
    expect(canonicalAuthority('::1', 8080)).toBe('[::1]:8080');
    expect(canonicalAuthority('a.example', 80)).toBe('a.example');
  });
});

describe('forwarded headers', () => {
  it('sets Host to the checked authority and drops what the proxy frames itself', () => {
    const head = requestHead(
      [
        'Host',
        'evil.example',
        'host',
        'other',
        'Content-Length',
        '5',
        'Transfer-Encoding',
        'chunked',
        'Expect',
        '100-continue',
        'X-A',
        '1',
        'x-a',
        '2',
        'Cookie',
        'a=1',
        'cookie',
        'b=2',
        'agentfence-identity',
        'forged',
        'Proxy-Authorization',
        'Basic x',
      ],
      'orders.test:8080',
    );
    expect(head).toEqual({ headers: { host: 'orders.test:8080', 'x-a': '1, 2', cookie: 'a=1; b=2' }, overrides: [] });
  });
  it.each(['content-length', 'Transfer-Encoding', 'host', 'keep-alive, Content-Length'])(
    'refuses Connection: %s',
    (value) =>
      expect(requestHead(['Connection', value], 'a')).toMatchObject({
        error: 'bad_connection_header',
        detail: expect.stringMatching(/Connection may not nominate/) as unknown,
      }),
  );
  it.each(['Content-Type', 'authorization', 'User-Agent', 'Referer'])(
    'refuses a second %s (the parser judges the first, a joined value would be forwarded)',
    (name) =>
      expect(requestHead([name, 'a', name.toLowerCase(), 'b'], 'h')).toEqual({
        error: 'duplicate_header',
        detail: `${name.toLowerCase()} may appear only once`,
      }),
  );
  it('drops what Connection nominates and reports method overrides', () => {
    expect(requestHead(['Connection', 'x-secret', 'X-Secret', '1', 'X-HTTP-Method-Override', 'delete'], 'a')).toEqual({
      headers: { host: 'a', 'x-http-method-override': 'delete' },
      overrides: ['DELETE'],
    });
    expect(endToEnd(['Connection', 'x-b', 'X-B', '1', 'Transfer-Encoding', 'chunked', 'X-C', '2'])).toEqual([
      'x-c',
      '2',
    ]);
  });
});

describe('method overrides in form bodies', () => {
  it.each([
    ['a=1&_method=DELETE', 'urlencoded', ['DELETE']],
    ['%5Fmethod=put', 'urlencoded', ['PUT']],
    ['_method+=patch', 'urlencoded', ['PATCH']],
    ['_method=%zz', 'urlencoded', ['?']],
    ['_method=', 'urlencoded', ['?']],
    ['a=1&method=x', 'urlencoded', []],
    ['--b\r\ncontent-disposition: form-data; name="_method"\r\n\r\nDELETE', 'multipart', ['?']],
    ['--b\r\ncontent-disposition: form-data; name="file"\r\n\r\nx', 'multipart', []],
  ] as const)('%s (%s) claims %j', (body, form, claims) => {
    expect(formOverrides(Buffer.from(body), form)).toEqual(claims);
  });
});
