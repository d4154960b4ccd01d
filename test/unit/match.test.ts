import { describe, expect, it } from 'vitest';
import type { AgentEntitlement, EntitlementEgressRule } from '../../lib/api/types.generated.ts';
import { Matcher, normalizeHost } from '../../sidecar/match.ts';
import { canonicalPath } from '../../sidecar/canonical.ts';
import { judgeAddress } from '../../sidecar/addresses.ts';

const rule = (over: Partial<EntitlementEgressRule>): EntitlementEgressRule => ({
  policy: 'p',
  rule: 'r',
  mode: 'Enforce',
  ports: [{ port: 443, protocol: 'TCP' }],
  ...over,
});
const ent = (egress: EntitlementEgressRule[]): AgentEntitlement => ({
  apiVersion: 'agentfence.io/v1alpha1',
  kind: 'AgentEntitlement',
  metadata: { name: 'pod', namespace: 'ns' },
  spec: { podName: 'pod', podUID: 'u', agent: 'a', spiffeID: 's', revision: 'sha256:1', egress },
});
const NOW = Date.parse('2026-11-22T00:00:00Z');
/** The canonical path of a raw request path (query dropped), or '!' when it is refused. */
const normalizePath = (raw: string): string => {
  const c = canonicalPath(raw.split('?', 1)[0] ?? '');
  return typeof c === 'string' ? c : '!';
};

describe('host matching', () => {
  const m = new Matcher(
    ent([
      rule({ rule: 'exact', hosts: ['api.example.com'] }),
      rule({ rule: 'one', hosts: ['*.one.example'] }),
      rule({ rule: 'any', hosts: ['**.any.example'] }),
    ]),
  );
  const host = (h: string): string | undefined => {
    const n = normalizeHost(h);
    if (!n) return undefined;
    const d = m.decideConnect({ host: n, port: 443 }, NOW);
    return d.allow ? d.rule.rule : undefined;
  };
  it.each([
    ['api.example.com', 'exact'],
    ['API.Example.COM', 'exact'],
    ['api.example.com.', 'exact'],
    ['x.api.example.com', undefined],
    ['a.one.example', 'one'],
    ['a.b.one.example', undefined],
    ['one.example', undefined],
    ['a.any.example', 'any'],
    ['a.b.c.any.example', 'any'],
    ['any.example', undefined],
    ['evilany.example', undefined],
    ['api.example.com.evil.net', undefined],
  ])('%s → %s', (h, expected) => expect(host(h)).toBe(expected));

  it('matches IDNs in punycode and refuses invalid hosts', () => {
    const idn = new Matcher(ent([rule({ hosts: ['xn--bcher-kva.example'] })]));
    expect(idn.decideConnect({ host: normalizeHost('bücher.example') ?? '', port: 443 }, NOW).allow).toBe(true);
    expect(normalizeHost('bad_host!.com')).toBeUndefined();
    expect(normalizeHost('[::1]')).toBe('::1');
  });

  it('matches IP literals only through cidrs, never through host patterns', () => {
    const cm = new Matcher(
      ent([rule({ rule: 'c', cidrs: ['10.40.0.0/16'] }), rule({ rule: 'h', hosts: ['api.example.com'] })]),
    );
    expect(cm.decideConnect({ host: '10.40.1.2', port: 443 }, NOW)).toMatchObject({ allow: true, rule: { rule: 'c' } });
    expect(cm.decideConnect({ host: '10.41.1.2', port: 443 }, NOW).allow).toBe(false);
    // Asked again (the containing rules are kept per address), on another port, and past the bound of kept ones.
    for (let i = 0; i < 1_100; i++) cm.decideConnect({ host: `10.40.${i >> 8}.${i & 255}`, port: 443 }, NOW);
    expect(cm.decideConnect({ host: '10.40.1.2', port: 443 }, NOW)).toMatchObject({ allow: true, rule: { rule: 'c' } });
    expect(cm.decideConnect({ host: '10.40.1.2', port: 80 }, NOW).allow).toBe(false);
    expect(cm.decideConnect({ host: '10.41.1.2', port: 443 }, NOW).allow).toBe(false);
    expect(cm.decideConnect({ host: '::ffff:10.40.1.2', port: 443 }, NOW).allow).toBe(false);
  });
});

describe('ports, methods, paths, expiry, modes', () => {
  it('checks ports and port ranges', () => {
    const m = new Matcher(
      ent([rule({ hosts: ['a.example'], ports: [{ port: 8000, endPort: 8010, protocol: 'TCP' }] })]),
    );
    expect(m.decideConnect({ host: 'a.example', port: 8005 }, NOW).allow).toBe(true);
    expect(m.decideConnect({ host: 'a.example', port: 8011 }, NOW)).toMatchObject({
      allow: false,
      reason: 'no_rule_for_destination',
    });
  });

  it('checks methods and paths for plain HTTP, on segment boundaries, after normalization', () => {
    const m = new Matcher(
      ent([
        rule({
          hosts: ['orders.svc'],
          ports: [{ port: 80, protocol: 'TCP' }],
          http: [
            {
              methods: ['GET'],
              paths: [
                { type: 'PathPrefix', value: '/v1/orders' },
                { type: 'Exact', value: '/health' },
              ],
            },
          ],
        }),
      ]),
    );
    const d = (method: string, raw: string) =>
      m.decideHttp({ host: 'orders.svc', port: 80, method, path: normalizePath(raw) }, NOW);
    expect(d('GET', '/v1/orders').allow).toBe(true);
    expect(d('GET', '/v1/orders/7?x=1').allow).toBe(true);
    expect(d('GET', '/v1/ordersX')).toMatchObject({ allow: false, reason: 'path_not_allowed' });
    expect(d('GET', '/health').allow).toBe(true);
    expect(d('GET', '/health/x').allow).toBe(false);
    expect(d('POST', '/v1/orders/7')).toMatchObject({ allow: false, reason: 'method_not_allowed' });
    expect(d('GET', '/v1/orders/..%2F..%2Fadmin').allow).toBe(false);
    expect(d('GET', '/v1//orders/./7').allow).toBe(true);
    expect(d('GET', '/v1/orders/%2e%2e/%2e%2e/admin').allow).toBe(false);
    // Ambiguous encodings and backslashes are refused, not decoded.
    expect(d('GET', '/v1\\orders\\7').allow).toBe(false);
    expect(d('GET', '/v1/orders/%37').allow).toBe(true);
  });

  it('allows a CONNECT to a destination whose rules need L7 checks only for inspection', () => {
    const m = new Matcher(ent([rule({ hosts: ['docs.example'], http: [{ methods: ['GET'] }] })]));
    expect(m.decideConnect({ host: 'docs.example', port: 443 }, NOW)).toMatchObject({ allow: true, inspect: true });
    const plain = new Matcher(ent([rule({ hosts: ['docs.example'] })]));
    expect(plain.decideConnect({ host: 'docs.example', port: 443 }, NOW).allow).toBe(true);
    expect(plain.decideConnect({ host: 'docs.example', port: 443 }, NOW)).not.toHaveProperty('inspect');
  });

  it('inspects a CONNECT when any matching rule needs it, whatever rule beside it would tunnel blind', () => {
    const blind = rule({ rule: 'blind', hosts: ['docs.example'] });
    const pinned = rule({ rule: 'pinned', hosts: ['docs.example'], tls: 'Passthrough' });
    const needing = [
      rule({ rule: 'audited', hosts: ['docs.example'], tls: 'Inspect' }),
      rule({ rule: 'profiled', hosts: ['*.example'], http: [{ methods: ['GET'] }] }),
      rule({ rule: 'mcp', hosts: ['**.example'], mcp: { tools: ['t'] } }),
    ];
    for (const need of needing)
      for (const order of [
        [blind, need],
        [need, blind],
        [pinned, need, blind],
      ])
        expect(new Matcher(ent(order)).decideConnect({ host: 'docs.example', port: 443 }, NOW)).toMatchObject({
          allow: true,
          inspect: true,
          rule: { rule: need.rule },
        });
    // Requests inside are still allowed by the rule without a profile.
    const both = new Matcher(ent([needing[1] ?? blind, blind]));
    expect(both.decideHttp({ host: 'docs.example', port: 443, method: 'DELETE', path: '/x' }, NOW)).toMatchObject({
      allow: true,
      rule: { rule: 'blind' },
    });
    expect(
      new Matcher(ent([blind, pinned])).decideConnect({ host: 'docs.example', port: 443 }, NOW),
    ).not.toHaveProperty('inspect');
  });

  it('ignores expired rules', () => {
    const m = new Matcher(ent([rule({ hosts: ['a.example'], expiresAt: '2026-11-21T00:00:00Z' })]));
    expect(m.decideConnect({ host: 'a.example', port: 443 }, NOW).allow).toBe(false);
  });

  it('is audit-only only when every rule comes from an Audit policy', () => {
    expect(new Matcher(ent([rule({ mode: 'Audit', hosts: ['a.example'] })])).auditOnly).toBe(true);
    expect(
      new Matcher(ent([rule({ mode: 'Audit', hosts: ['a.example'] }), rule({ hosts: ['b.example'] })])).auditOnly,
    ).toBe(false);
    expect(new Matcher(ent([])).auditOnly).toBe(false);
  });
});

describe('resolved-address check', () => {
  const hostOnly = new Matcher(ent([rule({ hosts: ['a.example'] })])).rules[0];
  const withCidr = new Matcher(ent([rule({ hosts: ['a.example'], cidrs: ['10.0.0.0/8', '0.0.0.0/0'] })])).rules[0];
  it.each([
    ['8.8.8.8', true],
    ['10.1.2.3', false],
    ['127.0.0.1', false],
    ['100.64.0.1', false],
    ['169.254.169.254', false],
    ['::1', false],
    ['fd12::1', false],
    ['::ffff:127.0.0.1', false],
  ])('host-only rule: %s allowed=%s', (address, ok) => {
    if (!hostOnly) throw new Error('no rule');
    expect(judgeAddress(address, hostOnly).ok).toBe(ok);
  });
  it('opens internal addresses only through cidrs, and metadata never', () => {
    if (!withCidr) throw new Error('no rule');
    expect(judgeAddress('10.1.2.3', withCidr).ok).toBe(true);
    expect(judgeAddress('169.254.169.254', withCidr)).toEqual({ ok: false, reason: 'metadata_address' });
  });
  it('keeps verdicts per rule: the same address judged again, and under another rule, gets its own verdict', () => {
    if (!withCidr || !hostOnly) throw new Error('no rule');
    for (let i = 0; i < 3; i++) {
      expect(judgeAddress('10.9.9.9', withCidr)).toEqual({ ok: true });
      expect(judgeAddress('10.9.9.9', hostOnly)).toEqual({ ok: false, reason: 'private_address' });
      expect(judgeAddress('::ffff:10.9.9.9', hostOnly)).toEqual({ ok: false, reason: 'private_address' });
    }
    // A new snapshot compiles new rules: what an older rule allowed is judged anew.
    const narrowed = new Matcher(ent([rule({ hosts: ['a.example'], cidrs: ['192.168.0.0/16'] })])).rules[0];
    if (!narrowed) throw new Error('no rule');
    expect(judgeAddress('10.9.9.9', narrowed)).toEqual({ ok: false, reason: 'private_address' });
    // Past the bound, verdicts are computed again, and still right.
    for (let i = 0; i < 1_100; i++) expect(judgeAddress(`8.8.${i >> 8}.${i & 255}`, hostOnly).ok).toBe(true);
    expect(judgeAddress('10.9.9.9', hostOnly).ok).toBe(false);
  });
});

describe('decision table', () => {
  const m = new Matcher(
    ent([
      rule({ rule: 'llm', hosts: ['api.openai.com'], ports: [{ port: 443, protocol: 'TCP' }] }),
      rule({
        rule: 'docs',
        hosts: ['**.docs.example.org', 'docs.example.org'],
        ports: [{ port: 80, protocol: 'TCP' }],
        http: [{ methods: ['GET', 'HEAD'], paths: [{ type: 'PathPrefix', value: '/docs/' }] }],
      }),
      rule({
        rule: 'orders',
        hosts: ['orders.commerce.svc'],
        cidrs: ['10.0.0.12/32'],
        ports: [{ port: 8080, protocol: 'TCP' }],
        http: [
          { methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/v1/orders/' }] },
          { methods: ['POST'], paths: [{ type: 'Exact', value: '/v1/refund-requests' }] },
        ],
      }),
      rule({
        rule: 'db',
        hosts: ['postgres.commerce.svc'],
        cidrs: ['10.0.0.13/32'],
        ports: [{ port: 5432, protocol: 'TCP' }],
      }),
      rule({
        rule: 'mirror',
        cidrs: ['10.40.0.0/16', '2001:db8::/32'],
        ports: [
          { port: 443, protocol: 'TCP' },
          { port: 8000, endPort: 8100, protocol: 'TCP' },
        ],
      }),
      rule({
        rule: 'mcp',
        hosts: ['github-mcp.tools.svc'],
        ports: [{ port: 8080, protocol: 'TCP' }],
        mcp: { path: '/mcp', tools: ['search_issues'] },
      }),
    ]),
  );
  const http = (method: string, host: string, port: number, path: string) => {
    const d = m.decideHttp({ method, host: normalizeHost(host) ?? '!', port, path: normalizePath(path) }, NOW);
    return d.allow ? `allow:${d.rule.rule}${d.needsMcpCheck ? '+mcp' : ''}` : `deny:${d.reason}`;
  };
  const tunnel = (host: string, port: number) => {
    const d = m.decideConnect({ host: normalizeHost(host) ?? '!', port }, NOW);
    return d.allow ? `allow:${d.rule.rule}${d.inspect ? '+inspect' : ''}` : `deny:${d.reason}`;
  };
  it.each([
    ['CONNECT api.openai.com:443', () => tunnel('api.openai.com', 443), 'allow:llm'],
    ['CONNECT API.OPENAI.COM.:443', () => tunnel('API.OPENAI.COM.', 443), 'allow:llm'],
    ['CONNECT api.openai.com:8443', () => tunnel('api.openai.com', 8443), 'deny:no_rule_for_destination'],
    ['CONNECT api.openai.com.evil.io:443', () => tunnel('api.openai.com.evil.io', 443), 'deny:no_rule_for_destination'],
    ['CONNECT docs.example.org:80 (L7 rule)', () => tunnel('docs.example.org', 80), 'allow:docs+inspect'],
    ['GET docs.example.org/docs/a', () => http('GET', 'docs.example.org', 80, '/docs/a'), 'allow:docs'],
    ['HEAD v2.docs.example.org/docs/', () => http('HEAD', 'v2.docs.example.org', 80, '/docs/'), 'allow:docs'],
    ['GET a.b.docs.example.org/docs/x', () => http('GET', 'a.b.docs.example.org', 80, '/docs/x'), 'allow:docs'],
    ['POST docs.example.org/docs/a', () => http('POST', 'docs.example.org', 80, '/docs/a'), 'deny:method_not_allowed'],
    ['GET docs.example.org/admin', () => http('GET', 'docs.example.org', 80, '/admin'), 'deny:path_not_allowed'],
    [
      'GET docs.example.org/docs/../admin',
      () => http('GET', 'docs.example.org', 80, '/docs/../admin'),
      'deny:path_not_allowed',
    ],
    [
      'GET docs.example.org/docs%2F..%2Fadmin',
      () => http('GET', 'docs.example.org', 80, '/docs%2F..%2Fadmin'),
      'deny:path_not_allowed',
    ],
    ['GET docs.example.org/docs', () => http('GET', 'docs.example.org', 80, '/docs'), 'deny:path_not_allowed'],
    [
      'GET xdocs.example.org/docs/',
      () => http('GET', 'xdocs.example.org', 80, '/docs/'),
      'deny:no_rule_for_destination',
    ],
    ['GET orders /v1/orders/7', () => http('GET', 'orders.commerce.svc', 8080, '/v1/orders/7'), 'allow:orders'],
    ['GET 10.0.0.12 /v1/orders/7 (cluster IP)', () => http('GET', '10.0.0.12', 8080, '/v1/orders/7'), 'allow:orders'],
    [
      'POST orders /v1/refund-requests',
      () => http('POST', 'orders.commerce.svc', 8080, '/v1/refund-requests'),
      'allow:orders',
    ],
    [
      'POST orders /v1/refund-requests/9',
      () => http('POST', 'orders.commerce.svc', 8080, '/v1/refund-requests/9'),
      'deny:path_not_allowed',
    ],
    [
      'DELETE orders /v1/orders/7',
      () => http('DELETE', 'orders.commerce.svc', 8080, '/v1/orders/7'),
      'deny:method_not_allowed',
    ],
    ['CONNECT postgres:5432', () => tunnel('postgres.commerce.svc', 5432), 'allow:db'],
    ['CONNECT 10.0.0.13:5432', () => tunnel('10.0.0.13', 5432), 'allow:db'],
    ['CONNECT 10.0.0.14:5432', () => tunnel('10.0.0.14', 5432), 'deny:no_rule_for_destination'],
    ['CONNECT 10.40.9.9:443', () => tunnel('10.40.9.9', 443), 'allow:mirror'],
    ['CONNECT 10.40.9.9:8050 (range)', () => tunnel('10.40.9.9', 8050), 'allow:mirror'],
    ['CONNECT 10.40.9.9:8101', () => tunnel('10.40.9.9', 8101), 'deny:no_rule_for_destination'],
    ['CONNECT [2001:db8::5]:443', () => tunnel('[2001:db8::5]', 443), 'allow:mirror'],
    ['CONNECT [2001:db9::5]:443', () => tunnel('[2001:db9::5]', 443), 'deny:no_rule_for_destination'],
    ['POST mcp /mcp', () => http('POST', 'github-mcp.tools.svc', 8080, '/mcp'), 'allow:mcp+mcp'],
    [
      'GET mcp /mcp (stream; a body is judged)',
      () => http('GET', 'github-mcp.tools.svc', 8080, '/mcp'),
      'allow:mcp+mcp',
    ],
    ['POST mcp /other', () => http('POST', 'github-mcp.tools.svc', 8080, '/other'), 'deny:method_not_allowed'],
    [
      'GET 169.254.169.254 /latest/meta-data',
      () => http('GET', '169.254.169.254', 80, '/latest/meta-data'),
      'deny:no_rule_for_destination',
    ],
  ] as [string, () => string, string][])('%s', (_, run, expected) => {
    expect(run()).toBe(expected);
  });
});

describe('IPv4 embedded in IPv6', () => {
  const wide = (cidrs: string[]) => {
    const compiled = new Matcher(ent([rule({ cidrs, ports: [{ port: 80, protocol: 'TCP' }] })])).rules[0];
    if (!compiled) throw new Error('no rule');
    return compiled;
  };
  it.each([
    ['::ffff:127.0.0.1', 'private_address'],
    ['::ffff:7f00:1', 'private_address'],
    ['::ffff:169.254.169.254', 'metadata_address'],
    ['::ffff:10.0.0.1', 'private_address'],
    ['64:ff9b::127.0.0.1', 'private_address'],
    ['64:ff9b::a9fe:a9fe', 'metadata_address'],
    ['64:ff9b:1::a9fe:a9fe', 'metadata_address'],
    ['::127.0.0.1', 'private_address'],
    ['::169.254.169.254', 'metadata_address'],
    ['::ffff:0:169.254.169.254', 'metadata_address'],
    ['2002:7f00:1::1', 'private_address'],
    ['2002:a9fe:a9fe::', 'metadata_address'],
    ['2001:0:1:2:3:4:5601:5601', 'metadata_address'],
  ])('%s under a ::/0 grant → %s', (address, reason) => {
    expect(judgeAddress(address, wide(['::/0']))).toEqual({ ok: false, reason });
  });
  it('judges the embedded address like the address itself', () => {
    expect(judgeAddress('::ffff:8.8.8.8', wide(['::/0']))).toEqual({ ok: true });
    expect(judgeAddress('2002:808:808::1', wide(['::/0']))).toEqual({ ok: true });
    expect(judgeAddress('::ffff:10.0.0.1', wide(['::/0', '10.0.0.0/8']))).toEqual({ ok: true });
    expect(judgeAddress('::ffff:169.254.169.254', wide(['::/0', '0.0.0.0/0']))).toEqual({
      ok: false,
      reason: 'metadata_address',
    });
    expect(judgeAddress('2001:db8::1', wide(['::/0']))).toEqual({ ok: true });
  });
});

describe('which CONNECT tunnels are inspected', () => {
  const profile = { http: [{ methods: ['GET' as const] }] };
  const decide = (rules: Partial<EntitlementEgressRule>[]) =>
    new Matcher(ent(rules.map((r, i) => rule({ rule: `r${i}`, hosts: ['api.example'], ...r })))).decideConnect(
      { host: 'api.example', port: 443 },
      NOW,
    );
  it('inspects when every matching rule has a profile', () => {
    expect(decide([profile])).toMatchObject({ allow: true, inspect: true });
  });
  it('keeps a blind tunnel for a rule without profile, or with tls: Passthrough, unless a rule beside needs inspection', () => {
    expect(decide([{}])).toMatchObject({ allow: true });
    expect(decide([{}])).not.toHaveProperty('inspect');
    expect(decide([{ tls: 'Passthrough' }])).not.toHaveProperty('inspect');
    // Passthrough beside a profile: inspected (fail closed; the profile's author asked for the checks).
    expect(decide([profile, { tls: 'Passthrough' }])).toMatchObject({ allow: true, inspect: true });
  });
  it('inspects a rule without profile that asks for it (tls: Inspect)', () => {
    expect(decide([{ tls: 'Inspect' }])).toMatchObject({ allow: true, inspect: true });
  });
});
