/**
 * The CRDs against the real API server: served, examples accepted, bad policies refused at `kubectl apply`
 * with a message a person understands, printer columns shown.
 */
import { readdirSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { createNamespace, run, runOrThrow } from '../support/cluster.ts';

const examplesDir = new URL('../../examples/', import.meta.url).pathname;

function policy(namespace: string, spec: Record<string, unknown>, name = 'p'): string {
  return stringify({ apiVersion: 'agentfence.io/v1alpha1', kind: 'AgentPolicy', metadata: { name, namespace }, spec });
}

const selector = { matchLabels: { 'agentfence.io/agent': 'a' } };
const rule = (over: Record<string, unknown>): Record<string, unknown> => ({
  name: 'r',
  to: { hosts: ['api.example.com'] },
  ports: [{ port: 443 }],
  ...over,
});

// Each case: a spec the API server must refuse, and the words the refusal must contain.
const invalid: [string, Record<string, unknown>, string][] = [
  ['empty agentSelector', { agentSelector: {} }, 'agentSelector must not be empty'],
  ['missing agentSelector', { egress: [rule({})] }, 'spec.agentSelector: Required value'],
  [
    'two targets in one rule',
    { agentSelector: selector, egress: [rule({ to: { hosts: ['a.example.com'], cidrs: ['10.0.0.0/8'] } })] },
    'exactly one of hosts, services, agents or cidrs',
  ],
  [
    'no target',
    { agentSelector: selector, egress: [rule({ to: {} })] },
    'exactly one of hosts, services, agents or cidrs',
  ],
  [
    'bare * host',
    { agentSelector: selector, egress: [rule({ to: { hosts: ['*'] } })] },
    "a bare '*' host would allow every destination",
  ],
  [
    'uppercase host',
    { agentSelector: selector, egress: [rule({ to: { hosts: ['API.example.com'] } })] },
    'hosts must be lower case',
  ],
  [
    'trailing-dot host',
    { agentSelector: selector, egress: [rule({ to: { hosts: ['api.example.com.'] } })] },
    'hosts must not end with a dot',
  ],
  [
    'wildcard on a TLD',
    { agentSelector: selector, egress: [rule({ to: { hosts: ['*.com'] } })] },
    'at least two labels after the wildcard',
  ],
  [
    'wildcard in the middle',
    { agentSelector: selector, egress: [rule({ to: { hosts: ['api.*.example.com'] } })] },
    'wildcards only as the whole first label',
  ],
  [
    'IP address as host',
    { agentSelector: selector, egress: [rule({ to: { hosts: ['10.1.2.3'] } })] },
    'IP addresses go in cidrs, not hosts',
  ],
  [
    'endPort < port',
    { agentSelector: selector, egress: [rule({ ports: [{ port: 9000, endPort: 8000 }] })] },
    'endPort must be greater than or equal to port',
  ],
  [
    'port out of range',
    { agentSelector: selector, egress: [rule({ ports: [{ port: 70000 }] })] },
    'should be less than or equal to 65535',
  ],
  [
    'L7 profile on a UDP port',
    {
      agentSelector: selector,
      egress: [rule({ ports: [{ port: 53, protocol: 'UDP' }], http: [{ methods: ['GET'] }] })],
    },
    'http and mcp profiles apply to TCP ports only',
  ],
  [
    'two profiles',
    { agentSelector: selector, egress: [rule({ http: [{ methods: ['GET'] }], mcp: { tools: ['a'] } })] },
    'at most one profile',
  ],
  [
    'tls: Passthrough with an http profile',
    { agentSelector: selector, egress: [rule({ tls: 'Passthrough', http: [{ methods: ['GET'] }] })] },
    'tls: Passthrough keeps HTTPS blind, so the http/mcp profile of this rule could not be checked',
  ],
  [
    'tls: Passthrough with an mcp profile',
    { agentSelector: selector, egress: [rule({ tls: 'Passthrough', mcp: { tools: ['a'] } })] },
    'tls: Passthrough keeps HTTPS blind',
  ],
  [
    'tls: Passthrough with a caBundle',
    { agentSelector: selector, egress: [rule({ tls: 'Passthrough', caBundle: { configMap: 'corp-ca' } })] },
    'a tls: Passthrough rule never connects with TLS itself',
  ],
  [
    'caBundle naming an invalid ConfigMap',
    { agentSelector: selector, egress: [rule({ caBundle: { configMap: 'Corp_CA' } })] },
    'ConfigMap names are DNS subdomains',
  ],
  ...(
    [
      ['a credential header that is not a header name', { header: 'Author ization' }, 'header must be a header name'],
      ['a credential in the Host header', { header: 'Host' }, 'header must not be one the proxy owns'],
      ['a credential in Content-Length', { header: 'content-length' }, 'header must not be one the proxy owns'],
      ['a credential in Proxy-Authorization', { header: 'Proxy-Authorization' }, 'must not be one the proxy owns'],
      ['a credential format without {value}', { format: 'Bearer token' }, "format must contain '{value}' exactly once"],
      ['a credential format with {value} twice', { format: '{value}{value}' }, "must contain '{value}' exactly once"],
      [
        'a credential format with a line break',
        { format: 'Bearer {value}\r\nX-Evil: 1' },
        'format must be printable ASCII',
      ],
      [
        'a credential Secret name that is not a DNS name',
        { secretRef: { name: 'LLM_API', key: 't' } },
        'Secret names are DNS subdomains',
      ],
      [
        'a credential Secret key with a slash',
        { secretRef: { name: 'llm-api', key: 'a/b' } },
        'Secret keys are letters, digits',
      ],
    ] as [string, Record<string, unknown>, string][]
  ).map(([name, over, message]): [string, Record<string, unknown>, string] => [
    name,
    {
      agentSelector: selector,
      egress: [
        rule({
          credentials: { secretRef: { name: 'llm-api', key: 'token' }, header: 'Authorization', ...over },
        }),
      ],
    },
    message,
  ]),
  [
    'credentials on a UDP port',
    {
      agentSelector: selector,
      egress: [
        rule({
          ports: [{ port: 443, protocol: 'UDP' }],
          credentials: { secretRef: { name: 'llm-api', key: 'token' }, header: 'Authorization' },
        }),
      ],
    },
    'credentials are added to HTTP requests, which use TCP ports only',
  ],
  [
    'credentials with tls: Passthrough',
    {
      agentSelector: selector,
      egress: [
        rule({
          tls: 'Passthrough',
          credentials: { secretRef: { name: 'llm-api', key: 'token' }, header: 'Authorization' },
        }),
      ],
    },
    'credentials need the sidecar to see the requests',
  ],
  [
    'unknown tls mode',
    { agentSelector: selector, egress: [rule({ tls: 'Terminate' })] },
    'supported values: "Inspect", "Passthrough"',
  ],
  [
    'metadata CIDR',
    { agentSelector: selector, egress: [rule({ to: { cidrs: ['169.254.169.254/32'] } })] },
    'link-local and cloud metadata ranges',
  ],
  [
    'IPv6 link-local CIDR',
    { agentSelector: selector, egress: [rule({ to: { cidrs: ['fe80::/64'] } })] },
    'link-local and cloud metadata ranges',
  ],
  [
    'CIDR with host bits',
    { agentSelector: selector, egress: [rule({ to: { cidrs: ['10.0.0.1/8'] } })] },
    'must not have host bits set',
  ],
  [
    'not a CIDR',
    { agentSelector: selector, egress: [rule({ to: { cidrs: ['10.0.0.0'] } })] },
    'address and a prefix length',
  ],
  ['tokenTTL too long', { agentSelector: selector, tokenTTL: '30m' }, 'tokenTTL must be between 1m and 15m'],
  ['tokenTTL too short', { agentSelector: selector, tokenTTL: '30s' }, 'tokenTTL must be between 1m and 15m'],
  ['tokenTTL not a duration', { agentSelector: selector, tokenTTL: '5 minutes' }, 'whole number of seconds or minutes'],
  [
    'duplicate rule names',
    { agentSelector: selector, egress: [rule({}), rule({ to: { hosts: ['b.example.com'] } })] },
    'Duplicate value: {"name":"r"}',
  ],
  [
    'rule name not a DNS label',
    { agentSelector: selector, egress: [rule({ name: 'My Rule' })] },
    'rule names must be lower-case DNS labels',
  ],
  ['unknown field', { agentSelector: selector, egres: [] }, 'unknown field "spec.egres"'],
  [
    'too many rules',
    { agentSelector: selector, egress: Array.from({ length: 65 }, (_, i) => rule({ name: `r${i}` })) },
    'must have at most 64 items',
  ],
  [
    'too many hosts',
    {
      agentSelector: selector,
      egress: [rule({ to: { hosts: Array.from({ length: 33 }, (_, i) => `h${i}.example.com`) } })],
    },
    'must have at most 32 items',
  ],
  ['unknown mode', { agentSelector: selector, mode: 'Permissive' }, 'supported values: "Enforce", "Audit"'],
  [
    'relative HTTP path',
    { agentSelector: selector, egress: [rule({ http: [{ paths: [{ value: 'v1/orders' }] }] })] },
    "paths must start with '/'",
  ],
  [
    'dot segments in path',
    { agentSelector: selector, egress: [rule({ http: [{ paths: [{ value: '/v1/../admin' }] }] })] },
    'paths must be normalized',
  ],
  [
    'wildcard MCP tool',
    { agentSelector: selector, egress: [rule({ mcp: { tools: ['*'] } })] },
    'wildcards are not allowed',
  ],
  [
    'In without values',
    { agentSelector: { matchExpressions: [{ key: 'a', operator: 'In' }] } },
    'operators In and NotIn need at least one value',
  ],
  [
    'ingress with two sources',
    {
      agentSelector: selector,
      ingress: [{ name: 'i', from: { cidrs: ['10.0.0.0/8'], pods: { podSelector: {} } }, ports: [{ port: 80 }] }],
    },
    'exactly one of agents, users, pods or cidrs',
  ],
  [
    'users from a plain-http issuer',
    {
      agentSelector: selector,
      ingress: [
        { name: 'i', from: { users: { issuer: 'http://idp.example', audiences: ['a'] } }, ports: [{ port: 80 }] },
      ],
    },
    'issuer must be an https:// URL',
  ],
  [
    'a rate limit per day',
    {
      agentSelector: selector,
      ingress: [
        {
          name: 'i',
          from: { cidrs: ['10.0.0.0/8'] },
          ports: [{ port: 80 }],
          rateLimit: { requests: 10, per: '1d' },
        },
      ],
    },
    'per must be a whole number of seconds, minutes or hours',
  ],
  [
    'an identity header in upper case',
    {
      agentSelector: selector,
      ingress: [{ name: 'i', from: { cidrs: ['10.0.0.0/8'] }, ports: [{ port: 80 }], identityHeaders: ['X-User-ID'] }],
    },
    'identityHeaders entries are header names in lower case',
  ],
  [
    'an ingress http profile on a UDP port',
    {
      agentSelector: selector,
      ingress: [
        {
          name: 'i',
          from: { cidrs: ['10.0.0.0/8'] },
          ports: [{ port: 53, protocol: 'UDP' }],
          http: [{ methods: ['GET'] }],
        },
      ],
    },
    'an http profile applies to TCP ports only',
  ],
  [
    'agents target with empty agentSelector',
    { agentSelector: selector, egress: [rule({ to: { agents: { agentSelector: {} } } })] },
    'agentSelector must not be empty',
  ],
];

describe('AgentPolicy and AgentEntitlement CRDs on a real API server', () => {
  let namespace: string;
  beforeAll(async () => {
    namespace = await createNamespace('crds');
  });

  it('serves both kinds under agentfence.io/v1alpha1 with short names and the agentfence category', async () => {
    const out = await runOrThrow(['api-resources', '--api-group=agentfence.io', '-o', 'wide']);
    expect(out).toMatch(/agententitlements\s+ae\s+agentfence\.io\/v1alpha1\s+true\s+AgentEntitlement/);
    expect(out).toMatch(/agentpolicies\s+ap\s+agentfence\.io\/v1alpha1\s+true\s+AgentPolicy/);
    expect(out).toContain('agentfence');
  });

  it('accepts every file in examples/ with kubectl apply', async () => {
    const files = readdirSync(examplesDir).filter((f) => f.endsWith('.yaml'));
    expect(files.length).toBeGreaterThanOrEqual(4);
    for (const file of files) {
      const result = await run(['apply', '-f', `${examplesDir}${file}`]);
      expect(result.stderr, file).toBe('');
      expect(result.code, file).toBe(0);
    }
    const listed = await runOrThrow(['get', 'agentpolicies', '--all-namespaces', '-o', 'name']);
    for (const name of ['support-agent', 'research-agent', 'triage-agent', 'planner', 'coder']) {
      expect(listed).toContain(`agentpolicy.agentfence.io/${name}`);
    }
  });

  it.each(invalid)('refuses %s', async (_, spec, message) => {
    const result = await run(['apply', '-f', '-'], policy(namespace, spec));
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain(message);
    // Nothing half-applied.
    const get = await run(['get', 'agentpolicy', 'p', '-n', namespace]);
    expect(get.code).not.toBe(0);
  });

  it('has at least 15 distinct refusals', () => {
    expect(new Set(invalid.map(([, , m]) => m)).size).toBeGreaterThanOrEqual(15);
  });

  it('defaults mode to Enforce, protocol to TCP and HTTP path type to PathPrefix', async () => {
    await runOrThrow(
      ['apply', '-f', '-'],
      policy(
        namespace,
        { agentSelector: selector, egress: [rule({ http: [{ paths: [{ value: '/v1/' }] }] })] },
        'defaults',
      ),
    );
    const obj = JSON.parse(await runOrThrow(['get', 'ap', 'defaults', '-n', namespace, '-o', 'json'])) as {
      spec: { mode: string; egress: { ports: { protocol: string }[]; http: { paths: { type: string }[] }[] }[] };
    };
    expect(obj.spec.mode).toBe('Enforce');
    expect(obj.spec.egress[0]?.ports[0]?.protocol).toBe('TCP');
    expect(obj.spec.egress[0]?.http[0]?.paths[0]?.type).toBe('PathPrefix');
  });

  it('shows Ready, Mode, Agents, InSync and Age in kubectl get ap, and counts from status', async () => {
    await runOrThrow(['apply', '-f', '-'], policy(namespace, { agentSelector: selector, mode: 'Audit' }, 'columns'));
    // Status is only writable through the /status subresource.
    await runOrThrow([
      'patch',
      'ap',
      'columns',
      '-n',
      namespace,
      '--subresource=status',
      '--type=merge',
      '-p',
      JSON.stringify({
        status: {
          agents: { selected: 3, inSync: 2 },
          conditions: [
            {
              type: 'Ready',
              status: 'False',
              reason: 'AgentsPending',
              message: '',
              lastTransitionTime: new Date().toISOString(),
            },
          ],
        },
      }),
    ]);
    const out = await runOrThrow(['get', 'ap', 'columns', '-n', namespace]);
    const [header, row] = out.trim().split('\n');
    expect(header?.split(/\s+/)).toEqual(['NAME', 'READY', 'MODE', 'AGENTS', 'INSYNC', 'AGE']);
    expect(row?.split(/\s+/).slice(0, 5)).toEqual(['columns', 'False', 'Audit', '3', '2']);
  });

  it('ignores status in a main-resource write (status subresource)', async () => {
    await runOrThrow(['apply', '-f', '-'], policy(namespace, { agentSelector: selector }, 'nostatus'));
    const doc = {
      apiVersion: 'agentfence.io/v1alpha1',
      kind: 'AgentPolicy',
      metadata: { name: 'nostatus', namespace },
      spec: { agentSelector: selector },
      status: { agents: { selected: 9 } },
    };
    await runOrThrow(['replace', '-f', '-'], JSON.stringify(doc));
    const obj = JSON.parse(await runOrThrow(['get', 'ap', 'nostatus', '-n', namespace, '-o', 'json'])) as {
      status?: unknown;
    };
    expect(obj.status).toBeUndefined();
  });

  it('accepts a well-formed AgentEntitlement and shows Pod, Agent, Revision, InSync and Expires', async () => {
    const ae = {
      apiVersion: 'agentfence.io/v1alpha1',
      kind: 'AgentEntitlement',
      metadata: { name: 'pod-a', namespace },
      spec: {
        podName: 'pod-a',
        podUID: '0b7f6c2e-1111-2222-3333-444455556666',
        agent: 'a',
        spiffeID: `spiffe://cluster.local/ns/${namespace}/agent/a`,
        revision: 'sha256:abc',
        expiresAt: '2030-01-01T00:00:00Z',
        egress: [
          {
            policy: 'p',
            rule: 'r',
            mode: 'Enforce',
            hosts: ['api.example.com'],
            ports: [{ port: 443, protocol: 'TCP' }],
          },
        ],
      },
    };
    await runOrThrow(['apply', '-f', '-'], JSON.stringify(ae));
    const out = await runOrThrow(['get', 'ae', 'pod-a', '-n', namespace]);
    const [header, row] = out.trim().split('\n');
    expect(header?.split(/\s+/)).toEqual(['NAME', 'POD', 'AGENT', 'REVISION', 'INSYNC', 'EXPIRES']);
    expect(row?.split(/\s+/).slice(0, 4)).toEqual(['pod-a', 'pod-a', 'a', 'sha256:abc']);
    const both = await runOrThrow(['get', 'agentfence', '-n', namespace, '-o', 'name']);
    expect(both).toContain('agententitlement.agentfence.io/pod-a');
    expect(both).toContain('agentpolicy.agentfence.io/columns');
  });
});
