/** The resources the controller reads and writes, named once. */
import { AGENT_ENTITLEMENT, AGENT_POLICY, GROUP, VERSION } from '../api/constants.ts';
import type { KubeObject, ResourceRef } from './client.ts';

const core = (resource: string): ResourceRef => ({ group: '', version: 'v1', resource });

export const RESOURCES = {
  pods: core('pods'),
  namespaces: core('namespaces'),
  services: core('services'),
  secrets: core('secrets'),
  configmaps: core('configmaps'),
  networkPolicies: { group: 'networking.k8s.io', version: 'v1', resource: 'networkpolicies' },
  ciliumNetworkPolicies: { group: 'cilium.io', version: 'v2', resource: 'ciliumnetworkpolicies' },
  mutatingWebhookConfigurations: {
    group: 'admissionregistration.k8s.io',
    version: 'v1',
    resource: 'mutatingwebhookconfigurations',
  },
  leases: { group: 'coordination.k8s.io', version: 'v1', resource: 'leases' },
  agentPolicies: { group: GROUP, version: VERSION, resource: AGENT_POLICY.plural },
  agentEntitlements: { group: GROUP, version: VERSION, resource: AGENT_ENTITLEMENT.plural },
} as const satisfies Record<string, ResourceRef>;

/** A Secret or ConfigMap as JSON (data values of Secrets are base64). */
export interface DataObject extends KubeObject {
  type?: string;
  data?: Record<string, string>;
}
