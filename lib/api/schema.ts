/**
 * The single source of truth for the AgentPolicy and AgentEntitlement APIs.
 *
 * `hack/gen-crds.ts` renders this into `crds/*.yaml` (what the API server validates against) and into
 * `lib/api/types.generated.ts` (what the code compiles against); `test/unit/crds.test.ts` fails when either
 * file is stale. Shared fragments (label selectors, ports, rules) are written once and reused, so the two
 * kinds cannot drift apart.
 *
 * Every list has `maxItems` and every string `maxLength`: the API server estimates the worst-case cost of
 * each CEL rule from these bounds and refuses unbounded schemas.
 */
import { AGENT_ENTITLEMENT, AGENT_POLICY, GROUP, VERSION } from './constants.ts';
import { NEVER_GRANTED } from '../ip.ts';

export interface Validation {
  rule: string;
  message?: string;
  messageExpression?: string;
  reason?: 'FieldValueInvalid' | 'FieldValueForbidden' | 'FieldValueRequired' | 'FieldValueDuplicate';
  fieldPath?: string;
}

/** The subset of the Kubernetes JSONSchemaProps we use. */
export interface Schema {
  type?: 'object' | 'array' | 'string' | 'integer' | 'boolean';
  description?: string;
  format?: string;
  enum?: readonly string[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  minItems?: number;
  maxItems?: number;
  maxProperties?: number;
  pattern?: string;
  required?: readonly string[];
  properties?: Record<string, Schema>;
  additionalProperties?: Schema;
  items?: Schema;
  'x-kubernetes-list-type'?: 'atomic' | 'set' | 'map';
  'x-kubernetes-list-map-keys'?: readonly string[];
  'x-kubernetes-validations'?: readonly Validation[];
}

/** Schemas that become a named TypeScript interface or alias (by object identity). */
export const typeNames = new Map<Schema, string>();
/** Documentation for named types used in several places, where each use has its own description. */
export const typeDocs = new Map<string, string>([
  ['LabelSelector', 'A Kubernetes label selector (metav1.LabelSelector).'],
]);
function named(name: string, schema: Schema): Schema {
  typeNames.set(schema, name);
  return schema;
}

const str = (maxLength: number, description: string, extra: Partial<Schema> = {}): Schema => ({
  type: 'string',
  maxLength,
  description,
  ...extra,
});

const DNS_LABEL = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$';
/** Written for a CEL string literal: the regex's `\.` is `\\.` in CEL. */
const DNS_SUBDOMAIN = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$';

// ---------------------------------------------------------------- shared fragments

const labelSelectorRequirement = named('LabelSelectorRequirement', {
  type: 'object',
  required: ['key', 'operator'],
  properties: {
    key: str(317, 'The label key the selector applies to.', { minLength: 1 }),
    operator: {
      type: 'string',
      enum: ['In', 'NotIn', 'Exists', 'DoesNotExist'],
      description: 'How key relates to values.',
    },
    values: {
      type: 'array',
      maxItems: 32,
      items: str(63, 'A label value.'),
      'x-kubernetes-list-type': 'atomic',
      description: 'Values for In and NotIn; must be empty for Exists and DoesNotExist.',
    },
  },
  'x-kubernetes-validations': [
    {
      rule: "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
      message: 'operators In and NotIn need at least one value',
    },
    {
      rule: "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
      message: 'operators Exists and DoesNotExist take no values',
    },
  ],
});

/** Every selector in the API has the shape of metav1.LabelSelector and one TypeScript interface. */
function labelSelector(description: string, requireNonEmpty?: string): Schema {
  const base: Schema = {
    type: 'object',
    description,
    properties: {
      matchLabels: {
        type: 'object',
        maxProperties: 32,
        additionalProperties: str(63, 'A label value.'),
        description: 'Labels that must all be present with these values.',
      },
      matchExpressions: {
        type: 'array',
        maxItems: 16,
        items: labelSelectorRequirement,
        'x-kubernetes-list-type': 'atomic',
        description: 'Requirements that must all hold.',
      },
    },
  };
  if (requireNonEmpty) {
    base['x-kubernetes-validations'] = [
      {
        rule: '(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)',
        message: requireNonEmpty,
      },
    ];
  }
  return named('LabelSelector', base);
}

const agentSelectorRequired = (description: string): Schema =>
  labelSelector(
    description,
    'agentSelector must not be empty: name the agents with matchLabels (for example agentfence.io/agent: my-agent) or matchExpressions',
  );

const port = named('PortRange', {
  type: 'object',
  required: ['port'],
  properties: {
    port: { type: 'integer', minimum: 1, maximum: 65535, description: 'The port, or the first port of a range.' },
    endPort: { type: 'integer', minimum: 1, maximum: 65535, description: 'The last port of a range (inclusive).' },
    protocol: { type: 'string', enum: ['TCP', 'UDP', 'SCTP'], default: 'TCP', description: 'Transport protocol.' },
  },
  'x-kubernetes-validations': [
    {
      rule: '!has(self.endPort) || self.endPort >= self.port',
      message: 'endPort must be greater than or equal to port',
    },
  ],
});

const ports = (description: string): Schema => ({
  type: 'array',
  minItems: 1,
  maxItems: 16,
  items: port,
  'x-kubernetes-list-type': 'atomic',
  description,
});

const HOST_SHAPE = '^(\\*\\*?\\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$';
const host: Schema = str(
  253,
  "A DNS name: exact ('api.example.com'), one label deep ('*.example.com') or any depth ('**.example.com'). Lower case; IDNs in their xn-- form.",
  {
    minLength: 1,
    'x-kubernetes-validations': [
      {
        rule: "self != '*' && self != '**'",
        message:
          "a bare '*' host would allow every destination; name the hosts, or use '*.example.com' (one label) or '**.example.com' (any depth)",
      },
      { rule: 'self == self.lowerAscii()', message: 'hosts must be lower case' },
      { rule: "!self.endsWith('.')", message: 'hosts must not end with a dot' },
      {
        rule: `self.matches('${HOST_SHAPE.replaceAll('\\', '\\\\')}')`,
        message:
          "hosts must be DNS names made of letters, digits and '-', optionally starting with '*.' or '**.' (wildcards only as the whole first label)",
      },
      {
        rule: "!self.startsWith('*') || self.split('.').size() >= 3",
        message: "a wildcard host needs at least two labels after the wildcard, like '*.example.com'",
      },
      { rule: '!isIP(self)', message: 'IP addresses go in cidrs, not hosts' },
    ],
  },
);

const cidr: Schema = str(49, 'An IPv4 or IPv6 CIDR, such as 10.20.0.0/16.', {
  minLength: 1,
  'x-kubernetes-validations': [
    { rule: 'isCIDR(self)', message: 'cidrs must be written as an address and a prefix length, like 10.0.0.0/8' },
    {
      rule: '!isCIDR(self) || cidr(self) == cidr(self).masked()',
      message: 'cidrs must not have host bits set: write the network address, like 10.0.0.0/8 rather than 10.0.0.1/8',
    },
    // Generated from lib/ip.ts, the list the compiler and the sidecar use too.
    {
      rule: `!isCIDR(self) || !(${NEVER_GRANTED.map((c) => `cidr('${c}').containsCIDR(self)`).join(' || ')})`,
      message: `link-local and cloud metadata ranges (${NEVER_GRANTED.join(', ')}) can never be granted; they are excluded from every rule`,
    },
  ],
});

const cidrs = (description: string): Schema => ({
  type: 'array',
  minItems: 1,
  maxItems: 32,
  items: cidr,
  'x-kubernetes-list-type': 'atomic',
  description,
});

const agentPeer = named('AgentPeer', {
  type: 'object',
  required: ['agentSelector'],
  description: 'Other agent pods (pods that carry agentfence.io/inject: "true").',
  properties: {
    agentSelector: agentSelectorRequired('Selects the agent pods, by their labels (usually agentfence.io/agent).'),
    namespaceSelector: labelSelector(
      'Selects the namespaces to look in. Absent: the policy’s own namespace. Empty: every namespace.',
    ),
  },
});

const serviceRef = named('ServiceReference', {
  type: 'object',
  required: ['name'],
  properties: {
    name: str(63, 'Service name.', {
      'x-kubernetes-validations': [{ rule: `self.matches('${DNS_LABEL}')`, message: 'service names are DNS labels' }],
    }),
    namespace: str(63, 'Service namespace; defaults to the policy’s namespace.', {
      'x-kubernetes-validations': [{ rule: `self.matches('${DNS_LABEL}')`, message: 'namespaces are DNS labels' }],
    }),
  },
});

const httpPath = named('HTTPPathMatch', {
  type: 'object',
  required: ['value'],
  properties: {
    type: {
      type: 'string',
      enum: ['Exact', 'PathPrefix'],
      default: 'PathPrefix',
      description: 'How value is matched.',
    },
    value: str(256, "The path, starting with '/'. Matched after normalization (dot segments, '//', %2F).", {
      minLength: 1,
      'x-kubernetes-validations': [
        { rule: "self.startsWith('/')", message: "paths must start with '/'" },
        {
          rule: "!self.contains('?') && !self.contains('#')",
          message: 'paths must not contain a query (?) or fragment (#)',
        },
        {
          rule: "!self.matches('(^|/)\\\\.\\\\.?(/|$)') && !self.contains('//')",
          message: "paths must be normalized: no '.' or '..' segments and no '//'",
        },
      ],
    }),
  },
});

const httpRule = named('HTTPRule', {
  type: 'object',
  description: 'One allowed request shape. Absent methods: any method. Absent paths: any path.',
  properties: {
    methods: {
      type: 'array',
      maxItems: 9,
      items: { type: 'string', enum: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'CONNECT', 'TRACE'] },
      'x-kubernetes-list-type': 'set',
      description: 'Allowed methods.',
    },
    paths: {
      type: 'array',
      maxItems: 16,
      items: httpPath,
      'x-kubernetes-list-type': 'atomic',
      description: 'Allowed paths.',
    },
  },
});

const httpRules: Schema = {
  type: 'array',
  minItems: 1,
  maxItems: 8,
  items: httpRule,
  'x-kubernetes-list-type': 'atomic',
  description:
    'HTTP profile: the sidecar also checks method and path, for plain HTTP and for HTTPS (CONNECT), which it then inspects with the pod CA (see tls).',
};

/** The ingress rules' profile: checked by the gate on the way in (plain HTTP; the gate does not terminate TLS). */
const INBOUND_HTTP = 'HTTP profile at the inbound gate: the methods and paths callers of this rule may use.';

const mcpProfile = named('MCPProfile', {
  type: 'object',
  required: ['tools'],
  description: 'Model Context Protocol profile: only these tools may be called (JSON-RPC tools/call over HTTP).',
  properties: {
    path: str(256, "The MCP endpoint path; default '/mcp'.", {
      default: '/mcp',
      'x-kubernetes-validations': [{ rule: "self.startsWith('/')", message: "the MCP path must start with '/'" }],
    }),
    tools: {
      type: 'array',
      minItems: 1,
      maxItems: 32,
      'x-kubernetes-list-type': 'set',
      items: str(128, 'A tool name, exactly as the server lists it.', {
        minLength: 1,
        'x-kubernetes-validations': [
          {
            rule: "self.matches('^[A-Za-z0-9_./-]+$')",
            message: "tool names are letters, digits, '_', '.', '/' and '-'; wildcards are not allowed",
          },
        ],
      }),
      description: 'Tools that may be called.',
    },
  },
});

const audience = str(
  256,
  'The audience of the agent token the sidecar presents to this destination (its `aud` claim).',
  {
    minLength: 1,
  },
);

/** A rule's upstream CA bundle in an AgentEntitlement: a few CA certificates, never a whole root store. */
export const CA_BUNDLE_MAX_BYTES = 65536;

const tlsMode: Schema = {
  type: 'string',
  enum: ['Inspect', 'Passthrough'],
  description:
    'HTTPS (CONNECT) to this destination. Inspect: the sidecar terminates TLS with the pod CA and judges every request inside (the default wherever an http or mcp profile needs it; set on a rule without a profile it audits each request). Passthrough: a blind tunnel, for clients that pin certificates; not allowed with an http or mcp profile.',
};

const caBundleRef = named('CABundleRef', {
  type: 'object',
  required: ['configMap'],
  description:
    'Upstream trust for inspected HTTPS to this destination: the CA certificates (PEM) in a ConfigMap of the policy’s namespace replace the public roots. Verification is never off.',
  properties: {
    configMap: str(253, 'The ConfigMap name.', {
      minLength: 1,
      'x-kubernetes-validations': [
        { rule: `self.matches('${DNS_SUBDOMAIN}')`, message: 'ConfigMap names are DNS subdomains' },
      ],
    }),
    key: str(253, "The key holding the PEM bundle; default 'ca.crt'.", { default: 'ca.crt', minLength: 1 }),
  },
});

/** Headers a credential may never be written into: framing, routing and hop-by-hop headers the proxy owns. */
export const CREDENTIAL_FORBIDDEN_HEADERS = [
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'proxy-authenticate',
  'te',
  'trailer',
  'upgrade',
  'expect',
  'agentfence-identity',
] as const;

const credentials = named('Credentials', {
  type: 'object',
  required: ['secretRef', 'header'],
  description:
    'A credential the sidecar adds to every request this rule allows (plain HTTP, or HTTPS, which it then inspects), replacing whatever the agent sent in that header. The agent never holds the value. The Secret must be in the policy’s namespace and carry the label agentfence.io/credential: "true".',
  properties: {
    secretRef: named('CredentialSecretRef', {
      type: 'object',
      required: ['name', 'key'],
      description: 'The Secret and key holding the value.',
      properties: {
        name: str(253, 'The Secret name (in the policy’s namespace).', {
          minLength: 1,
          'x-kubernetes-validations': [
            { rule: `self.matches('${DNS_SUBDOMAIN}')`, message: 'Secret names are DNS subdomains' },
          ],
        }),
        key: str(253, 'The key in the Secret’s data.', {
          minLength: 1,
          'x-kubernetes-validations': [
            { rule: "self.matches('^[-._a-zA-Z0-9]+$')", message: "Secret keys are letters, digits, '-', '_' and '.'" },
          ],
        }),
      },
    }),
    header: str(128, 'The request header that carries the credential, like Authorization or x-api-key.', {
      minLength: 1,
      'x-kubernetes-validations': [
        {
          rule: "self.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$')",
          message: 'header must be a header name (letters, digits and !#$%&*+.^_|~-)',
        },
        {
          rule: `!(self.lowerAscii() in [${CREDENTIAL_FORBIDDEN_HEADERS.map((h) => `'${h}'`).join(', ')}])`,
          message: `header must not be one the proxy owns (${CREDENTIAL_FORBIDDEN_HEADERS.join(', ')})`,
        },
      ],
    }),
    format: str(256, "How the header value is written; '{value}' is replaced by the credential. Default '{value}'.", {
      default: '{value}',
      'x-kubernetes-validations': [
        {
          rule: "self.indexOf('{value}') >= 0 && self.indexOf('{value}') == self.lastIndexOf('{value}')",
          message: "format must contain '{value}' exactly once, like 'Bearer {value}'",
        },
        { rule: "self.matches('^[ -~]*$')", message: 'format must be printable ASCII (no line breaks)' },
      ],
    }),
  },
});

const ruleName = str(63, 'Rule name, unique within the list; appears in status, audit lines and metrics.', {
  minLength: 1,
  'x-kubernetes-validations': [
    { rule: `self.matches('${DNS_LABEL}')`, message: "rule names must be lower-case DNS labels (a-z, 0-9 and '-')" },
  ],
});

const egressTarget = named('EgressTarget', {
  type: 'object',
  description: 'Where the agent may go: exactly one of hosts, services, agents or cidrs.',
  properties: {
    hosts: {
      type: 'array',
      minItems: 1,
      maxItems: 32,
      items: host,
      'x-kubernetes-list-type': 'set',
      description:
        'DNS names. Enforced by the sidecar; NetworkPolicy cannot express them (see the Degraded condition).',
    },
    services: {
      type: 'array',
      minItems: 1,
      maxItems: 32,
      items: serviceRef,
      'x-kubernetes-list-type': 'atomic',
      description: 'Kubernetes Services, resolved to their pods and target ports for the NetworkPolicy.',
    },
    agents: agentPeer,
    cidrs: cidrs('IP ranges. Link-local and metadata addresses are always excluded.'),
  },
  'x-kubernetes-validations': [
    {
      rule: '[has(self.hosts), has(self.services), has(self.agents), has(self.cidrs)].filter(x, x).size() == 1',
      message: 'to must name exactly one of hosts, services, agents or cidrs; use separate rules for separate targets',
    },
  ],
});

const egressRule = named('EgressRule', {
  type: 'object',
  required: ['name', 'to', 'ports'],
  properties: {
    name: ruleName,
    to: egressTarget,
    ports: ports('Destination ports (the Service port for services).'),
    http: httpRules,
    mcp: mcpProfile,
    audience,
    tls: tlsMode,
    caBundle: caBundleRef,
    credentials,
  },
  'x-kubernetes-validations': [
    { rule: '!(has(self.http) && has(self.mcp))', message: 'a rule takes at most one profile: http or mcp' },
    {
      rule: "!(has(self.tls) && self.tls == 'Passthrough' && (has(self.http) || has(self.mcp)))",
      message:
        'tls: Passthrough keeps HTTPS blind, so the http/mcp profile of this rule could not be checked; drop the profile or use tls: Inspect',
    },
    {
      rule: "!(has(self.tls) && self.tls == 'Passthrough' && has(self.caBundle))",
      message: 'caBundle verifies upstreams of inspected HTTPS; a tls: Passthrough rule never connects with TLS itself',
    },
    {
      rule: "!(has(self.http) || has(self.mcp)) || self.ports.all(p, !has(p.protocol) || p.protocol == 'TCP')",
      message: 'http and mcp profiles apply to TCP ports only; drop the profile or use protocol TCP',
    },
    {
      rule: "!has(self.credentials) || self.ports.all(p, !has(p.protocol) || p.protocol == 'TCP')",
      message: 'credentials are added to HTTP requests, which use TCP ports only; use protocol TCP',
    },
    {
      rule: "!(has(self.credentials) && has(self.tls) && self.tls == 'Passthrough')",
      message:
        'credentials need the sidecar to see the requests; a tls: Passthrough tunnel is blind, drop tls or use Inspect',
    },
  ],
});

const userClaim = named('RequiredClaim', {
  type: 'object',
  required: ['name', 'value'],
  description:
    'A claim the user token must carry: a string claim equal to value, or an array claim (such as groups) containing it.',
  properties: {
    name: str(128, 'The claim name, such as groups or email_verified.', {
      minLength: 1,
      'x-kubernetes-validations': [
        {
          rule: "self.matches('^[A-Za-z0-9_.:/-]+$')",
          message: "claim names are letters, digits, '_', '.', ':', '/' and '-'",
        },
      ],
    }),
    value: str(256, 'The value the claim must equal or, for an array claim, contain.', { minLength: 1 }),
  },
});

const userSource = named('UserSource', {
  type: 'object',
  required: ['issuer', 'audiences'],
  description:
    'People and client apps, by an OIDC bearer token (Authorization: Bearer) verified against the issuer’s JWKS.',
  properties: {
    issuer: str(512, "The OIDC issuer URL (the token's iss), https.", {
      minLength: 9,
      'x-kubernetes-validations': [
        {
          rule: "self.startsWith('https://') && isURL(self)",
          message: 'issuer must be an https:// URL (the token’s iss, exactly)',
        },
      ],
    }),
    jwksUri: str(512, 'Where the issuer publishes its keys; default <issuer>/.well-known/jwks.json.', {
      'x-kubernetes-validations': [
        { rule: "self.startsWith('https://') && isURL(self)", message: 'jwksUri must be an https:// URL' },
      ],
    }),
    audiences: {
      type: 'array',
      minItems: 1,
      maxItems: 8,
      items: str(256, 'An accepted audience (aud).', { minLength: 1 }),
      'x-kubernetes-list-type': 'set',
      description: 'The token must name at least one of these audiences.',
    },
    claims: {
      type: 'array',
      maxItems: 8,
      items: userClaim,
      'x-kubernetes-list-type': 'atomic',
      description: 'Claims the token must carry (all of them).',
    },
  },
});

const rateLimit = named('RateLimit', {
  type: 'object',
  required: ['requests', 'per'],
  description: 'At most this many requests per caller identity in each window; beyond it 429 with Retry-After.',
  properties: {
    requests: { type: 'integer', minimum: 1, maximum: 1_000_000, description: 'Requests allowed per window.' },
    per: str(8, "The window: whole seconds, minutes or hours, like '1s', '1m', '1h'.", {
      'x-kubernetes-validations': [
        {
          rule: "self.matches('^[1-9][0-9]{0,3}(s|m|h)$')",
          message: "per must be a whole number of seconds, minutes or hours, like '10s', '1m' or '1h'",
        },
      ],
    }),
  },
});

const maxBodyBytes: Schema = {
  type: 'integer',
  minimum: 0,
  maximum: 1_073_741_824,
  description: 'Largest request body accepted (bytes); larger ones are refused with 413 before the app sees them.',
};

const identityHeaders: Schema = {
  type: 'array',
  maxItems: 16,
  'x-kubernetes-list-type': 'set',
  items: str(64, 'A request header name, lower case.', {
    minLength: 1,
    'x-kubernetes-validations': [
      {
        rule: "self.matches('^[a-z0-9][a-z0-9._-]*$')",
        message: "identityHeaders entries are header names in lower case: letters, digits, '-', '.' and '_'",
      },
    ],
  }),
  description:
    'Headers your app reads as an identity (such as x-user-id): stripped from every request into the pod, whatever the caller, before it reaches the app. agentfence-caller, agentfence-user, agentfence-user-issuer and agentfence-identity always are.',
};

const ingressSource = named('IngressSource', {
  type: 'object',
  description:
    'Who may connect: exactly one of agents, users, pods or cidrs. Agents and users prove who they are with a token the sidecar verifies; pods and cidrs are admitted by source address.',
  properties: {
    agents: agentPeer,
    users: userSource,
    pods: named('PodPeer', {
      type: 'object',
      required: ['podSelector'],
      description: 'Ordinary (non-agent) pods, such as a web front end.',
      properties: {
        podSelector: labelSelector('Selects the pods. Empty: every pod.'),
        namespaceSelector: labelSelector(
          'Selects namespaces. Absent: the policy’s own namespace. Empty: every namespace.',
        ),
      },
    }),
    cidrs: cidrs('Source IP ranges.'),
  },
  'x-kubernetes-validations': [
    {
      rule: '[has(self.agents), has(self.users), has(self.pods), has(self.cidrs)].filter(x, x).size() == 1',
      message: 'from must name exactly one of agents, users, pods or cidrs; use separate rules for separate sources',
    },
  ],
});

const ingressRule = named('IngressRule', {
  type: 'object',
  required: ['name', 'from', 'ports'],
  description:
    'Who may connect to the selected agents. For agents of other namespaces this is also consent: their egress grants to agents (or to Services of agents) here open nothing until a rule here admits their namespace and agents (from.agents).',
  properties: {
    name: ruleName,
    from: ingressSource,
    ports: ports(
      'Ports on the agent pod (the app’s container ports). Callers reach them through the sidecar’s inbound gate.',
    ),
    http: { ...httpRules, description: INBOUND_HTTP },
    maxBodyBytes,
    rateLimit,
    identityHeaders,
  },
  'x-kubernetes-validations': [
    {
      rule: "!has(self.http) || self.ports.all(p, !has(p.protocol) || p.protocol == 'TCP')",
      message: 'an http profile applies to TCP ports only; drop the profile or use protocol TCP',
    },
  ],
});

const condition = named('Condition', {
  type: 'object',
  required: ['type', 'status', 'reason', 'lastTransitionTime'],
  properties: {
    type: str(316, 'Condition type: Accepted, NetworkPolicyProgrammed, AgentsInSync, Degraded, Ready.'),
    status: { type: 'string', enum: ['True', 'False', 'Unknown'], description: 'Condition status.' },
    reason: str(1024, 'CamelCase reason, stable and documented.'),
    message: str(32768, 'Human-readable detail.'),
    observedGeneration: { type: 'integer', minimum: 0, description: 'The generation this condition describes.' },
    lastTransitionTime: { type: 'string', format: 'date-time', description: 'When status last changed.' },
  },
});

const conditions: Schema = {
  type: 'array',
  maxItems: 16,
  items: condition,
  'x-kubernetes-list-type': 'map',
  'x-kubernetes-list-map-keys': ['type'],
  description: 'Standard conditions.',
};

// ---------------------------------------------------------------- AgentPolicy

export const agentPolicySpec = named('AgentPolicySpec', {
  type: 'object',
  required: ['agentSelector'],
  description: 'What a set of agents may reach. Allow-only: several policies selecting a pod are unioned.',
  properties: {
    agentSelector: agentSelectorRequired('Selects the agent pods in this namespace that this policy grants to.'),
    mode: {
      type: 'string',
      enum: ['Enforce', 'Audit'],
      default: 'Enforce',
      description:
        'Enforce: the sidecar denies what no rule allows. Audit: the sidecar forwards and logs "would deny". NetworkPolicies are enforced in both modes.',
    },
    tokenTTL: str(
      16,
      "Lifetime of the agents' identity tokens, 1m to 15m (default 5m). The shortest of all matching policies wins.",
      {
        'x-kubernetes-validations': [
          {
            rule: "self.matches('^[1-9][0-9]{0,3}(s|m)$')",
            message: "tokenTTL must be a whole number of seconds or minutes, like '90s' or '5m'",
          },
          {
            rule: "!self.matches('^[1-9][0-9]{0,3}(s|m)$') || (duration(self) >= duration('1m') && duration(self) <= duration('15m'))",
            message: 'tokenTTL must be between 1m and 15m',
          },
        ],
      },
    ),
    expiresAt: {
      type: 'string',
      format: 'date-time',
      description: 'When set, the grants of this policy end at this moment (RFC 3339).',
    },
    egress: {
      type: 'array',
      maxItems: 64,
      items: egressRule,
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['name'],
      description: 'Outbound grants.',
    },
    ingress: {
      type: 'array',
      maxItems: 64,
      items: ingressRule,
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['name'],
      description:
        'Inbound grants (the baseline refuses all ingress to agent pods). A grant from another namespace needs one of these here: both sides consent.',
    },
  },
});

export const agentPolicyStatus = named('AgentPolicyStatus', {
  type: 'object',
  properties: {
    observedGeneration: { type: 'integer', minimum: 0, description: 'The spec generation last reconciled.' },
    conditions,
    agents: named('AgentCounts', {
      type: 'object',
      properties: {
        selected: { type: 'integer', minimum: 0, description: 'Agent pods this policy selects.' },
        inSync: { type: 'integer', minimum: 0, description: 'Of those, sidecars enforcing the current revision.' },
      },
    }),
    networkPolicies: {
      type: 'array',
      maxItems: 16,
      'x-kubernetes-list-type': 'atomic',
      items: named('ManagedObjectRef', {
        type: 'object',
        required: ['kind', 'name'],
        properties: { kind: str(63, 'Kind.'), name: str(253, 'Name.') },
      }),
      description: 'Objects written for this policy.',
    },
  },
});

// ---------------------------------------------------------------- AgentEntitlement

/**
 * The same fragment without CEL rules, keeping its type name. AgentEntitlements are written by the operator
 * from policies the API server already validated; re-checking them would only spend the CEL cost budget.
 */
function withoutValidations(schema: Schema): Schema {
  const copy: Schema = { ...schema };
  delete copy['x-kubernetes-validations'];
  if (copy.properties) {
    copy.properties = Object.fromEntries(Object.entries(copy.properties).map(([k, v]) => [k, withoutValidations(v)]));
  }
  if (copy.items) copy.items = withoutValidations(copy.items);
  if (copy.additionalProperties) copy.additionalProperties = withoutValidations(copy.additionalProperties);
  const name = typeNames.get(schema);
  if (name !== undefined) typeNames.set(copy, name);
  return copy;
}

const entitlementEgressRule = named('EntitlementEgressRule', {
  type: 'object',
  required: ['policy', 'rule', 'mode', 'ports'],
  description: 'One compiled grant. Exactly what the sidecar checks: hosts and/or cidrs, ports, and the L7 profile.',
  properties: {
    policy: str(253, 'The AgentPolicy this grant comes from.'),
    rule: str(63, 'The rule name in that policy.'),
    mode: { type: 'string', enum: ['Enforce', 'Audit'], description: 'The mode of that policy.' },
    hosts: {
      type: 'array',
      maxItems: 64,
      items: str(253, 'Host pattern.'),
      'x-kubernetes-list-type': 'atomic',
      description: 'Host patterns (from hosts, and the DNS names of services).',
    },
    cidrs: {
      type: 'array',
      maxItems: 256,
      items: str(49, 'CIDR.'),
      'x-kubernetes-list-type': 'atomic',
      description: 'Addresses (from cidrs, service cluster IPs and agent pod IPs).',
    },
    ports: withoutValidations({ ...ports('Ports.'), minItems: 0 }),
    http: withoutValidations({ ...httpRules, minItems: 0 }),
    mcp: withoutValidations(mcpProfile),
    audience,
    peers: {
      type: 'array',
      maxItems: 256,
      'x-kubernetes-list-type': 'atomic',
      items: named('AgentPeerAddress', {
        type: 'object',
        required: ['cidr', 'spiffeID'],
        description:
          'An address of agent pods (a pod IP, or the cluster IP of a Service backed by agents): requests to it carry a token for spiffeID.',
        properties: {
          cidr: str(49, 'The address (/32 or /128).'),
          spiffeID: str(2048, 'The callee agent’s identity: the audience of the token presented to it.'),
          gates: {
            type: 'array',
            maxItems: 16,
            'x-kubernetes-list-type': 'atomic',
            description: 'For a pod address: the callee sidecar’s inbound port in front of each app port.',
            items: named('GatePort', {
              type: 'object',
              required: ['port', 'gate'],
              properties: {
                port: { type: 'integer', minimum: 1, maximum: 65535, description: 'The app’s port.' },
                gate: { type: 'integer', minimum: 1, maximum: 65535, description: 'The sidecar port in front of it.' },
              },
            }),
          },
        },
      }),
      description: 'Agent addresses this rule reaches, and the identity each expects.',
    },
    expiresAt: { type: 'string', format: 'date-time', description: 'When this grant ends.' },
    tls: tlsMode,
    caBundle: str(
      CA_BUNDLE_MAX_BYTES,
      'PEM CA certificates trusted for this destination’s upstream TLS instead of the public roots (resolved from the policy’s ConfigMap; empty when it could not be read: nothing verifies).',
    ),
    credentials: named('EntitlementCredentials', {
      type: 'object',
      required: ['secret', 'key', 'header', 'format', 'version'],
      description:
        'Where the credential for this grant comes from. Never the value: that travels only in the authenticated entitlement stream, to this pod.',
      properties: {
        secret: str(253, 'The Secret (in this namespace).'),
        key: str(253, 'The key in it.'),
        header: str(128, 'The header the sidecar sets.'),
        format: str(256, "The header value, with '{value}' standing for the credential."),
        version: str(
          80,
          "Which version of the Secret the grant was compiled against (a hash of its uid and resourceVersion); '' when it could not be read (requests are refused: credential_unavailable).",
        ),
      },
    }),
  },
});

const entitlementIngressRule = named('EntitlementIngressRule', {
  type: 'object',
  required: ['policy', 'rule', 'mode', 'ports'],
  description:
    'One compiled inbound grant, checked by the sidecar’s gate: who (verified agents, verified users, or source addresses), on which app ports, with which profile and limits.',
  properties: {
    policy: str(253, 'The AgentPolicy this grant comes from.'),
    rule: str(63, 'The rule name in that policy.'),
    mode: { type: 'string', enum: ['Enforce', 'Audit'], description: 'The mode of that policy.' },
    ports: withoutValidations({ ...ports('App ports.'), minItems: 0 }),
    agents: {
      type: 'array',
      maxItems: 1024,
      'x-kubernetes-list-type': 'atomic',
      description: 'Caller agents: the SPIFFE ID and the uids of the live pods that may present it.',
      items: named('AllowedCaller', {
        type: 'object',
        required: ['spiffeID', 'pods'],
        properties: {
          spiffeID: str(2048, 'The caller’s identity.'),
          pods: {
            type: 'array',
            maxItems: 1024,
            items: str(64, 'Pod uid.'),
            'x-kubernetes-list-type': 'atomic',
            description: 'Live pods of that agent (a deleted pod’s token is refused).',
          },
        },
      }),
    },
    users: withoutValidations(userSource),
    cidrs: {
      type: 'array',
      maxItems: 256,
      items: str(49, 'CIDR.'),
      'x-kubernetes-list-type': 'atomic',
      description: 'Source addresses admitted without a token (from pods and cidrs).',
    },
    http: withoutValidations({ ...httpRules, minItems: 0, description: INBOUND_HTTP }),
    maxBodyBytes,
    rateLimit: withoutValidations(rateLimit),
    identityHeaders: withoutValidations(identityHeaders),
    expiresAt: { type: 'string', format: 'date-time', description: 'When this grant ends.' },
  },
});

export const agentEntitlementSpec = named('AgentEntitlementSpec', {
  type: 'object',
  required: ['podName', 'podUID', 'agent', 'spiffeID', 'revision'],
  description: 'The compiled entitlements of one agent pod. Written by the operator; do not edit.',
  properties: {
    podName: str(253, 'The pod.'),
    podUID: str(64, 'The pod uid (a recreated pod with the same name gets a new entitlement).'),
    agent: str(63, 'The agent name (label agentfence.io/agent).'),
    serviceAccountName: str(253, 'The pod’s service account.'),
    spiffeID: str(2048, 'The identity the pod’s tokens carry as sub.'),
    revision: str(80, 'sha256 of the compiled rules; the sidecar reports the revision it enforces.'),
    tokenTTL: str(6, 'Identity token lifetime (the shortest of the matching policies).'),
    expiresAt: { type: 'string', format: 'date-time', description: 'The next moment a grant ends.' },
    policies: {
      type: 'array',
      maxItems: 128,
      items: str(253, 'Policy name.'),
      'x-kubernetes-list-type': 'set',
      description: 'AgentPolicies that select this pod.',
    },
    egress: {
      type: 'array',
      maxItems: 1024,
      items: entitlementEgressRule,
      'x-kubernetes-list-type': 'atomic',
      description: 'Outbound grants, sorted.',
    },
    ingress: {
      type: 'array',
      maxItems: 256,
      items: entitlementIngressRule,
      'x-kubernetes-list-type': 'atomic',
      description: 'Inbound grants checked by the sidecar’s gate, sorted.',
    },
  },
});

export const agentEntitlementStatus = named('AgentEntitlementStatus', {
  type: 'object',
  properties: {
    observedGeneration: { type: 'integer', minimum: 0, description: 'The spec generation last reported on.' },
    enforcedRevision: str(80, 'The revision the sidecar last reported enforcing.'),
    inSync: { type: 'boolean', description: 'The sidecar enforces spec.revision.' },
    conditions,
  },
});

// ---------------------------------------------------------------- CRDs

interface PrinterColumn {
  name: string;
  type: 'string' | 'integer' | 'boolean' | 'date';
  jsonPath: string;
  description?: string;
  priority?: number;
}

function crd(
  names: { kind: string; plural: string; singular: string },
  shortNames: string[],
  spec: Schema,
  status: Schema,
  description: string,
  columns: PrinterColumn[],
): Record<string, unknown> {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: {
      name: `${names.plural}.${GROUP}`,
      labels: { 'app.kubernetes.io/name': 'agentfence', 'app.kubernetes.io/part-of': 'agentfence' },
    },
    spec: {
      group: GROUP,
      scope: 'Namespaced',
      names: { ...names, listKind: `${names.kind}List`, shortNames, categories: ['agentfence'] },
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: columns,
          schema: {
            openAPIV3Schema: {
              type: 'object',
              description,
              required: ['spec'],
              properties: {
                apiVersion: { type: 'string', description: 'API version.' },
                kind: { type: 'string', description: 'Kind.' },
                metadata: { type: 'object' },
                spec,
                status,
              },
            },
          },
        },
      ],
    },
  };
}

export const agentPolicyCRD = crd(
  AGENT_POLICY,
  ['ap'],
  agentPolicySpec,
  agentPolicyStatus,
  'AgentPolicy grants a set of agent pods access to hosts, services, other agents and IP ranges.',
  [
    { name: 'Ready', type: 'string', jsonPath: '.status.conditions[?(@.type=="Ready")].status' },
    { name: 'Mode', type: 'string', jsonPath: '.spec.mode' },
    { name: 'Agents', type: 'integer', jsonPath: '.status.agents.selected' },
    { name: 'InSync', type: 'integer', jsonPath: '.status.agents.inSync' },
    { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
  ],
);

export const agentEntitlementCRD = crd(
  AGENT_ENTITLEMENT,
  ['ae'],
  agentEntitlementSpec,
  agentEntitlementStatus,
  'AgentEntitlement is the compiled, per-pod result of every AgentPolicy that selects the pod. Operator-owned.',
  [
    { name: 'Pod', type: 'string', jsonPath: '.spec.podName' },
    { name: 'Agent', type: 'string', jsonPath: '.spec.agent' },
    { name: 'Revision', type: 'string', jsonPath: '.spec.revision' },
    { name: 'InSync', type: 'boolean', jsonPath: '.status.inSync' },
    { name: 'Expires', type: 'date', jsonPath: '.spec.expiresAt' },
  ],
);
