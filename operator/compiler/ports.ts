/** Port lists and token lifetimes in the one normal form the compiler compares and hashes. */
import type { PortRange } from '../../lib/api/types.generated.ts';
import { canonicalJSON, compareStrings } from './canonical.ts';
import type { NetworkPolicyPort } from './types.ts';

/** A port range with its protocol defaulted, as the CRD default would have written it. */
export type NormalPort = PortRange & { protocol: 'TCP' | 'UDP' | 'SCTP' };

/** Ports with protocols defaulted, single-port ranges collapsed, duplicates dropped, sorted. */
export function normalizePorts(ports: readonly PortRange[]): NormalPort[] {
  const seen = new Map<string, NormalPort>();
  for (const p of ports) {
    const port: NormalPort = {
      port: p.port,
      ...(p.endPort !== undefined && p.endPort !== p.port ? { endPort: p.endPort } : {}),
      protocol: p.protocol ?? 'TCP',
    };
    seen.set(canonicalJSON(port), port);
  }
  return [...seen.values()].sort(comparePorts);
}

export function comparePorts(a: PortRange, b: PortRange): number {
  return (
    compareStrings(a.protocol ?? 'TCP', b.protocol ?? 'TCP') ||
    a.port - b.port ||
    (a.endPort ?? a.port) - (b.endPort ?? b.port)
  );
}

export function toNetworkPolicyPorts(ports: readonly PortRange[]): NetworkPolicyPort[] {
  return normalizePorts(ports).map((p) => ({
    protocol: p.protocol,
    port: p.port,
    ...(p.endPort !== undefined ? { endPort: p.endPort } : {}),
  }));
}
