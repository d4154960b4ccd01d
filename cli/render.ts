/**
 * `agentfence render`: compile AgentPolicies against manifests offline and print what the operator would write
 * (AgentEntitlements, NetworkPolicies, CiliumNetworkPolicies) as one multi-document YAML stream.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseAllDocuments, stringify } from 'yaml';
import type { CommandContext } from './main.ts';
import { compile, DEFAULT_TRUST_DOMAIN } from '../operator/compiler/index.ts';
import { collectManifests, ManifestError, type SourceDocument } from '../operator/compiler/documents.ts';
import type { DnsTarget, NetworkProvider, OperatorEndpoint } from '../operator/compiler/types.ts';
import { CONTROLLER } from '../operator/defaults.ts';

export interface RenderConfig {
  /** Files to read, directories already expanded, in the order given. */
  files: string[];
  trustDomain: string;
  networkProvider: NetworkProvider;
  dns?: DnsTarget;
  /** Where the chart's controller runs: what the baseline lets agents reach. */
  operator: OperatorEndpoint;
  now: Date;
}

const HELP = `Usage: agentfence render -f FILE_OR_DIR [-f ...] [flags]

Compiles the AgentPolicies in the given manifests against the Pods, workloads (Deployments, StatefulSets,
DaemonSets, Jobs, CronJobs, ReplicaSets: one pod per template), Namespaces and Services next to them, and
prints the AgentEntitlements and NetworkPolicies the operator would write, as a multi-document YAML stream.
Problems the operator would report in status (FQDNNotEnforcedAtL3, ServiceNotFound, ...) go to stderr.

Flags:
  -f, --filename PATH        a YAML/JSON file or a directory of them (repeatable)
  --values FILE              the Helm values of the install (trustDomain, networkProvider, dns.mode,
                             dns.nodeLocalIP), as for helm install -f; the flags below override them
  --namespace NS             the release namespace the controller runs in (default ${CONTROLLER.namespace})
  --trust-domain NAME        SPIFFE trust domain (default ${DEFAULT_TRUST_DOMAIN})
  --network-provider NAME    kubernetes | cilium (cilium adds CiliumNetworkPolicies with toFQDNs)
  --dns-address IP           cluster DNS is at this address, e.g. NodeLocal DNSCache (repeatable)
`;

/** The chart values that change what the controller writes; everything else in the file is ignored. */
interface ChartValues {
  trustDomain?: string;
  networkProvider?: string;
  dnsAddresses?: string[];
}

function readChartValues(path: string): ChartValues {
  let doc: unknown;
  try {
    doc = parseAllDocuments(readFileSync(resolve(path), 'utf8'))[0]?.toJS();
  } catch (err) {
    throw new Error(`--values ${path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  if (doc === undefined || doc === null) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new Error(`--values ${path}: not a YAML mapping`);
  const v = doc as Record<string, unknown>;
  const str = (value: unknown, field: string): string | undefined => {
    if (value === undefined) return undefined;
    if (typeof value !== 'string') throw new Error(`--values ${path}: ${field} must be a string`);
    return value;
  };
  const out: ChartValues = {};
  const trustDomain = str(v.trustDomain, 'trustDomain');
  if (trustDomain !== undefined) out.trustDomain = trustDomain;
  const provider = str(v.networkProvider, 'networkProvider');
  if (provider !== undefined) out.networkProvider = provider;
  const dns = v.dns as Record<string, unknown> | undefined;
  if (dns !== undefined && (typeof dns !== 'object' || Array.isArray(dns)))
    throw new Error(`--values ${path}: dns must be a mapping`);
  const mode = str(dns?.mode, 'dns.mode') ?? 'kube-dns';
  if (mode !== 'kube-dns' && mode !== 'node-local')
    throw new Error(`--values ${path}: dns.mode must be kube-dns or node-local (got '${mode}')`);
  if (mode === 'node-local') {
    const ip = str(dns?.nodeLocalIP, 'dns.nodeLocalIP');
    if (!ip) throw new Error(`--values ${path}: dns.mode node-local needs dns.nodeLocalIP`);
    out.dnsAddresses = [ip];
  }
  return out;
}

const MANIFEST = /\.(ya?ml|json)$/;

function expand(path: string): string[] {
  const absolute = resolve(path);
  let stat;
  try {
    stat = statSync(absolute);
  } catch {
    throw new Error(`-f ${path}: no such file or directory`);
  }
  if (!stat.isDirectory()) return [absolute];
  return readdirSync(absolute)
    .filter((f) => MANIFEST.test(f))
    .sort()
    .map((f) => join(absolute, f));
}

export function loadRenderConfig(argv: string[], now: Date): RenderConfig | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      filename: { type: 'string', short: 'f', multiple: true, default: [] },
      values: { type: 'string' },
      namespace: { type: 'string', default: CONTROLLER.namespace },
      'trust-domain': { type: 'string' },
      'network-provider': { type: 'string' },
      'dns-address': { type: 'string', multiple: true, default: [] },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  if (values.filename.length === 0) throw new Error('at least one -f FILE_OR_DIR is required');
  const chart = values.values !== undefined ? readChartValues(values.values) : {};
  const provider = values['network-provider'] ?? chart.networkProvider ?? 'kubernetes';
  if (provider !== 'kubernetes' && provider !== 'cilium') {
    throw new Error(`--network-provider must be kubernetes or cilium (got '${provider}')`);
  }
  const trustDomain = values['trust-domain'] ?? chart.trustDomain ?? DEFAULT_TRUST_DOMAIN;
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(trustDomain)) {
    throw new Error(`--trust-domain must be a lower-case DNS name (got '${trustDomain}')`);
  }
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(values.namespace)) {
    throw new Error(`--namespace must be a namespace name (got '${values.namespace}')`);
  }
  const config: RenderConfig = {
    files: values.filename.flatMap(expand),
    trustDomain,
    networkProvider: provider,
    operator: { namespace: values.namespace, podLabels: { ...CONTROLLER.podLabels }, port: CONTROLLER.port },
    now,
  };
  const dnsAddresses = values['dns-address'].length > 0 ? values['dns-address'] : chart.dnsAddresses;
  if (dnsAddresses) config.dns = { kind: 'addresses', addresses: dnsAddresses };
  return config;
}

export function readDocuments(file: string): SourceDocument[] {
  const text = readFileSync(file, 'utf8');
  return parseAllDocuments(text).map((doc, i) => {
    const [error] = doc.errors;
    if (error) throw new ManifestError([`${file}: document ${i}: ${error.message.split('\n')[0] ?? ''}`]);
    return { source: file, index: String(i), value: doc.toJS() as unknown };
  });
}

/** Errors reject the promise (main prints them to stderr and exits 1); stdout is written only on success. */
export function renderCommand(ctx: CommandContext): Promise<number> {
  return Promise.resolve().then(() => render(ctx));
}

function render(ctx: CommandContext): number {
  const config = loadRenderConfig(ctx.argv, new Date());
  if (config === 'help') {
    ctx.stdout(HELP);
    return 0;
  }
  const manifests = collectManifests(config.files.flatMap(readDocuments));
  const out = compile(manifests, {
    now: config.now,
    trustDomain: config.trustDomain,
    networkProvider: config.networkProvider,
    operator: config.operator,
    ...(config.dns ? { dns: config.dns } : {}),
  });
  for (const report of out.reports) {
    for (const p of [...report.problems, ...report.foreign]) {
      ctx.stderr(`${report.namespace}/${report.name}${p.rule ? ` rule ${p.rule}` : ''}: ${p.reason}: ${p.message}\n`);
    }
  }
  const objects = [...out.entitlements, ...out.networkPolicies, ...out.ciliumNetworkPolicies];
  ctx.stdout(objects.map((o) => stringify(o, { lineWidth: 0, aliasDuplicateObjects: false })).join('---\n'));
  return 0;
}
