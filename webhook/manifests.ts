/**
 * The admission configuration the chart installs, as data: the MutatingWebhookConfiguration that calls us and
 * the ValidatingAdmissionPolicy that runs inside the API server (it cannot go down) to keep injected pods
 * injected. The integration tests install exactly these (with a URL instead of the Service); a chart test
 * checks the chart renders the same rules.
 */
import { LABEL_AGENT, LABEL_INJECT } from '../lib/api/constants.ts';
import { SIDECAR_NAME } from './inject.ts';

export const WEBHOOK_CONFIGURATION_NAME = 'agentfence-sidecar-injector';
export const WEBHOOK_NAME = 'inject.agentfence.io';
export const VAP_NAME = 'agentfence-pod-integrity';

export type ClientConfig =
  { service: { name: string; namespace: string; path: string; port: number } } | { url: string };

export interface WebhookOptions {
  clientConfig: ClientConfig;
  caBundle?: string;
  excludeNamespaces: string[];
  /** Extra namespace labels that must match (tests scope the webhook to their own namespaces). */
  namespaceMatchLabels?: Record<string, string>;
  timeoutSeconds?: number;
}

const isInjectedOld = `has(oldObject.metadata.labels) && '${LABEL_INJECT}' in oldObject.metadata.labels && oldObject.metadata.labels['${LABEL_INJECT}'] == 'true'`;
const isLabelled = `has(object.metadata.labels) && '${LABEL_INJECT}' in object.metadata.labels && object.metadata.labels['${LABEL_INJECT}'] == 'true'`;

export function mutatingWebhookConfiguration(options: WebhookOptions): Record<string, unknown> {
  return {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'MutatingWebhookConfiguration',
    metadata: { name: WEBHOOK_CONFIGURATION_NAME, labels: { 'app.kubernetes.io/name': 'agentfence' } },
    webhooks: [
      {
        name: WEBHOOK_NAME,
        admissionReviewVersions: ['v1'],
        clientConfig: { ...options.clientConfig, ...(options.caBundle ? { caBundle: options.caBundle } : {}) },
        rules: [
          { operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' },
        ],
        // Unlabelled pods never reach us, so our availability only matters for agent pods.
        objectSelector: { matchLabels: { [LABEL_INJECT]: 'true' } },
        namespaceSelector: {
          ...(options.namespaceMatchLabels ? { matchLabels: options.namespaceMatchLabels } : {}),
          matchExpressions: [
            { key: 'kubernetes.io/metadata.name', operator: 'NotIn', values: options.excludeNamespaces },
          ],
        },
        // Mirror pods (static pods the kubelet reports) cannot be changed: do not spend a call on them.
        matchConditions: [
          {
            name: 'not-a-mirror-pod',
            expression:
              "!has(object.metadata.annotations) || !('kubernetes.io/config.mirror' in object.metadata.annotations)",
          },
        ],
        // An agent pod never runs unfenced: if we cannot answer, the pod is not created.
        failurePolicy: 'Fail',
        sideEffects: 'None',
        timeoutSeconds: options.timeoutSeconds ?? 5,
        // Called again if a later webhook adds a container, so that container gets the proxy environment too.
        reinvocationPolicy: 'IfNeeded',
        matchPolicy: 'Equivalent',
      },
    ],
  };
}

export function podIntegrityPolicy(): Record<string, unknown> {
  return {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'ValidatingAdmissionPolicy',
    metadata: { name: VAP_NAME, labels: { 'app.kubernetes.io/name': 'agentfence' } },
    spec: {
      failurePolicy: 'Fail',
      matchConstraints: {
        resourceRules: [
          { apiGroups: [''], apiVersions: ['v1'], operations: ['CREATE', 'UPDATE'], resources: ['pods'] },
        ],
      },
      validations: [
        {
          // Runs after mutation: a labelled pod without the sidecar means the webhook was skipped or bypassed.
          expression: `request.operation != 'CREATE' || !(${isLabelled}) || (has(object.spec.initContainers) && object.spec.initContainers.exists(c, c.name == '${SIDECAR_NAME}'))`,
          message: `pods labelled ${LABEL_INJECT}=true must carry the ${SIDECAR_NAME} container: the injection webhook did not run (is the namespace excluded, or the webhook configuration missing?)`,
          reason: 'Forbidden',
        },
        {
          expression: `request.operation != 'UPDATE' || !(${isInjectedOld}) || (${isLabelled})`,
          message: `the ${LABEL_INJECT} label cannot be removed from an injected pod; delete the pod and create it without the label instead`,
          reason: 'Forbidden',
        },
        {
          expression: `request.operation != 'UPDATE' || !(${isInjectedOld}) || (has(object.metadata.labels) && '${LABEL_AGENT}' in object.metadata.labels && '${LABEL_AGENT}' in oldObject.metadata.labels && object.metadata.labels['${LABEL_AGENT}'] == oldObject.metadata.labels['${LABEL_AGENT}'])`,
          message: `the ${LABEL_AGENT} label of an injected pod cannot change: its identity is fixed for its lifetime`,
          reason: 'Forbidden',
        },
      ],
    },
  };
}

export function podIntegrityBinding(options: {
  excludeNamespaces: string[];
  namespaceMatchLabels?: Record<string, string>;
}): Record<string, unknown> {
  return {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'ValidatingAdmissionPolicyBinding',
    metadata: { name: VAP_NAME, labels: { 'app.kubernetes.io/name': 'agentfence' } },
    spec: {
      policyName: VAP_NAME,
      validationActions: ['Deny'],
      matchResources: {
        namespaceSelector: {
          ...(options.namespaceMatchLabels ? { matchLabels: options.namespaceMatchLabels } : {}),
          matchExpressions: [
            { key: 'kubernetes.io/metadata.name', operator: 'NotIn', values: options.excludeNamespaces },
          ],
        },
      },
    },
  };
}
