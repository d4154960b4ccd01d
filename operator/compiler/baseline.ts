/** The per-namespace baseline NetworkPolicy, and the DNS rule Cilium's FQDN policies need. */
import { LABEL_INJECT, LABEL_MANAGED_BY, MANAGED_BY } from '../../lib/api/constants.ts';
import type { LabelSelector } from '../../lib/api/types.generated.ts';
import { sortedUnique } from './canonical.ts';
import { NAMESPACE_NAME_LABEL } from './cluster-index.ts';
import { hostCidr } from '../../lib/ip.ts';
import { BASELINE_NAME } from './names.ts';
import type { CiliumEgressRule, CompileOptions, DnsTarget, NetworkPolicy, NetworkPolicyPeer } from './types.ts';

const INJECT = { [LABEL_INJECT]: 'true' };

export function namespaceSelectorFor(namespace: string): LabelSelector {
  return { matchLabels: { [NAMESPACE_NAME_LABEL]: namespace } };
}

/** Cilium's toFQDNs only learns addresses from DNS answers its proxy saw: DNS must go through the proxy. */
export function ciliumDnsRule(dns: DnsTarget): CiliumEgressRule {
  const toPorts = [
    { ports: [{ port: String(dns.port ?? 53), protocol: 'ANY' as const }], rules: { dns: [{ matchPattern: '*' }] } },
  ];
  if (dns.kind === 'addresses') return { toCIDR: sortedUnique(dns.addresses.map((a) => hostCidr(a) ?? a)), toPorts };
  return {
    toEndpoints: [{ matchLabels: { 'k8s:io.kubernetes.pod.namespace': dns.namespace, ...dns.podLabels } }],
    toPorts,
  };
}

export function baselinePolicy(namespace: string, options: Required<CompileOptions>): NetworkPolicy {
  const dns = options.dns;
  const dnsPort = dns.port ?? 53;
  const dnsPeers: NetworkPolicyPeer[] =
    dns.kind === 'pods'
      ? [{ namespaceSelector: namespaceSelectorFor(dns.namespace), podSelector: { matchLabels: dns.podLabels } }]
      : sortedUnique(dns.addresses.map((a) => hostCidr(a) ?? a)).map((cidr) => ({ ipBlock: { cidr } }));
  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: BASELINE_NAME, namespace, labels: { [LABEL_MANAGED_BY]: MANAGED_BY } },
    spec: {
      podSelector: { matchLabels: INJECT },
      policyTypes: ['Ingress', 'Egress'],
      egress: [
        {
          to: dnsPeers,
          ports: [
            { protocol: 'TCP', port: dnsPort },
            { protocol: 'UDP', port: dnsPort },
          ],
        },
        {
          to: [
            {
              namespaceSelector: namespaceSelectorFor(options.operator.namespace),
              podSelector: { matchLabels: options.operator.podLabels },
            },
          ],
          ports: [{ protocol: 'TCP', port: options.operator.port }],
        },
      ],
    },
  };
}
