/**
 * Compiler benchmark: 1,000 AgentPolicies × 10,000 pods (100 namespaces × 100 pods, 80 of them agents; one
 * Service per namespace with a named target port; rules of every target kind). Prints the median of a few
 * runs. Target: ≤ 2 s. Run with `npm run bench:compile`.
 */
import { performance } from 'node:perf_hooks';
import type { AgentPolicy } from '../lib/api/types.generated.ts';
import { compile } from '../operator/compiler/index.ts';
import type { CompileInput, Namespace, PodInput, Service } from '../operator/compiler/types.ts';

const NAMESPACES = 100;
const PODS_PER_NAMESPACE = 100;
const AGENTS_PER_NAMESPACE = 80;
const POLICIES_PER_NAMESPACE = 10;

function generate(): CompileInput {
  const namespaces: Namespace[] = [];
  const pods: PodInput[] = [];
  const services: Service[] = [];
  const policies: AgentPolicy[] = [];
  for (let n = 0; n < NAMESPACES; n++) {
    const ns = `team-${n}`;
    namespaces.push({
      metadata: { name: ns, labels: { 'kubernetes.io/metadata.name': ns, tier: n % 2 ? 'odd' : 'even' } },
    });
    for (let p = 0; p < PODS_PER_NAMESPACE; p++) {
      const agent = p < AGENTS_PER_NAMESPACE;
      pods.push({
        metadata: {
          name: `${agent ? 'agent' : 'api'}-${p}`,
          namespace: ns,
          uid: `uid-${n}-${p}`,
          labels: agent
            ? { 'agentfence.io/inject': 'true', 'agentfence.io/agent': `agent-${p % POLICIES_PER_NAMESPACE}` }
            : { app: 'api', version: p % 2 ? 'v1' : 'v2' },
        },
        spec: { containers: [{ name: 'c', ports: [{ name: 'http', containerPort: p % 2 ? 8080 : 9090 }] }] },
        status: { podIP: `10.${n}.${Math.floor(p / 250)}.${(p % 250) + 1}` },
      });
    }
    services.push({
      metadata: { name: 'api', namespace: ns },
      spec: { selector: { app: 'api' }, clusterIP: `10.96.${n}.1`, ports: [{ port: 80, targetPort: 'http' }] },
    });
    for (let i = 0; i < POLICIES_PER_NAMESPACE; i++) {
      policies.push({
        apiVersion: 'agentfence.io/v1alpha1',
        kind: 'AgentPolicy',
        metadata: { name: `policy-${i}`, namespace: ns, uid: `uid-policy-${n}-${i}` },
        spec: {
          agentSelector: { matchLabels: { 'agentfence.io/agent': `agent-${i}` } },
          egress: [
            { name: 'llm', to: { hosts: ['api.openai.com', '*.anthropic.com'] }, ports: [{ port: 443 }] },
            {
              name: 'api',
              to: { services: [{ name: 'api' }, { name: 'api', namespace: `team-${(n + 1) % NAMESPACES}` }] },
              ports: [{ port: 80 }],
            },
            { name: 'net', to: { cidrs: ['10.200.0.0/16', '0.0.0.0/0'] }, ports: [{ port: 5432 }] },
            {
              name: 'peer',
              to: {
                agents: {
                  namespaceSelector: { matchLabels: { tier: 'odd' } },
                  agentSelector: {
                    matchLabels: { 'agentfence.io/agent': `agent-${(i + 1) % POLICIES_PER_NAMESPACE}` },
                  },
                },
              },
              ports: [{ port: 8443 }],
            },
          ],
          ingress: [
            { name: 'web', from: { pods: { podSelector: { matchLabels: { app: 'web' } } } }, ports: [{ port: 8000 }] },
          ],
        },
      });
    }
  }
  return { namespaces, pods, services, policies };
}

const input = generate();
const timings: number[] = [];
let summary = '';
for (let run = 0; run < 5; run++) {
  const start = performance.now();
  const out = compile(input, { now: new Date('2026-01-01T00:00:00Z') });
  timings.push(performance.now() - start);
  summary = `${out.entitlements.length} entitlements, ${out.networkPolicies.length} NetworkPolicies`;
}
timings.sort((a, b) => a - b);
const median = timings[Math.floor(timings.length / 2)] ?? NaN;
process.stdout.write(
  `compile: ${input.policies.length} policies x ${input.pods.length} pods -> ${summary}: median ${median.toFixed(0)} ms (min ${(timings[0] ?? NaN).toFixed(0)} ms, target 2000 ms)\n`,
);
