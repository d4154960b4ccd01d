/** Small builders for compiler inputs: realistic objects with only the fields that matter to a test. */
import type { AgentPolicy, AgentPolicySpec } from '../../lib/api/types.generated.ts';
import type { ContainerPort, Namespace, PodInput, Service } from '../../operator/compiler/types.ts';

export const NOW = new Date('2026-06-01T12:00:00Z');

export function policy(
  namespace: string,
  name: string,
  spec: Partial<AgentPolicySpec> & { agent?: string },
): AgentPolicy {
  const { agent, ...rest } = spec;
  return {
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentPolicy',
    metadata: { name, namespace, uid: `uid-policy-${namespace}-${name}` },
    spec: { agentSelector: { matchLabels: { 'agentfence.io/agent': agent ?? name } }, ...rest },
  };
}

let ipCounter = 0;
export function agentPod(
  namespace: string,
  name: string,
  agent: string | undefined,
  extra: {
    labels?: Record<string, string>;
    ip?: string | null;
    serviceAccountName?: string;
    terminating?: boolean;
  } = {},
): PodInput {
  const ip = extra.ip === undefined ? `10.1.${Math.floor(++ipCounter / 250)}.${(ipCounter % 250) + 1}` : extra.ip;
  return {
    metadata: {
      name,
      namespace,
      uid: `uid-${namespace}-${name}`,
      labels: { 'agentfence.io/inject': 'true', ...(agent ? { 'agentfence.io/agent': agent } : {}), ...extra.labels },
      ...(extra.terminating ? { deletionTimestamp: '2026-06-01T11:59:00Z' } : {}),
    },
    spec: { serviceAccountName: extra.serviceAccountName ?? 'default', containers: [{ name: 'agent' }] },
    ...(ip ? { status: { podIP: ip, podIPs: [{ ip }] } } : {}),
  };
}

export function backendPod(
  namespace: string,
  name: string,
  labels: Record<string, string>,
  ports: ContainerPort[],
  ip?: string,
): PodInput {
  return {
    metadata: { name, namespace, uid: `uid-${namespace}-${name}`, labels },
    spec: { containers: [{ name: 'app', ports }] },
    ...(ip ? { status: { podIP: ip } } : {}),
  };
}

export function service(namespace: string, name: string, spec: NonNullable<Service['spec']>): Service {
  return { metadata: { name, namespace }, spec };
}

export function namespace(name: string, labels: Record<string, string> = {}): Namespace {
  return { metadata: { name, labels: { 'kubernetes.io/metadata.name': name, ...labels } } };
}

/** A deterministic shuffle (a seeded LCG), so a failing order can be reproduced. */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let state = seed;
  for (let i = out.length - 1; i > 0; i--) {
    state = (state * 1103515245 + 12345) % 2147483648;
    const j = state % (i + 1);
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}
