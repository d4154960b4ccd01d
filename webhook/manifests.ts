/**
 * The admission configuration the chart installs, as data: the MutatingWebhookConfiguration that calls us and
 * the ValidatingAdmissionPolicy that runs inside the API server (it cannot go down) to keep injected pods
 * injected. The integration tests install exactly these (with a URL instead of the Service); a chart test
 * checks the chart renders the same rules.
 */
import { AGENT_ENTITLEMENT, ANNOTATION_INJECTED, GROUP, LABEL_AGENT, LABEL_INJECT } from '../lib/api/constants.ts';
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

const labelled = (obj: string): string =>
  `(has(${obj}.metadata.labels) && '${LABEL_INJECT}' in ${obj}.metadata.labels && ${obj}.metadata.labels['${LABEL_INJECT}'] == 'true')`;
const annotated = (obj: string): string =>
  `(has(${obj}.metadata.annotations) && '${ANNOTATION_INJECTED}' in ${obj}.metadata.annotations)`;
const sidecars = (obj: string): string =>
  `(has(${obj}.spec.initContainers) ? ${obj}.spec.initContainers.filter(c, c.name == '${SIDECAR_NAME}') : [])`;
const isInjectedOld = labelled('oldObject');
const isLabelled = labelled('object');
/** An agent pod before this request: labelled, annotated or carrying the sidecar. */
const agentPodOld = `(${isInjectedOld} || ${annotated('oldObject')} || size(${sidecars('oldObject')}) > 0)`;
/**
 * Every UPDATE of the pod object, whichever endpoint it comes through: the `pods/status` subresource keeps changes
 * to labels and annotations (its strategy resets only the spec), so exempting subresources let
 * `PATCH pods/x/status {"metadata":{"labels":{"agentfence.io/agent":"other"}}}` rename a live agent. On
 * `pods/ephemeralcontainers` the API server resets everything but the ephemeral containers, so these rules hold
 * trivially there.
 */
const onPodUpdate = `request.operation != 'UPDATE'`;

/**
 * Each rule's message starts with its name in brackets, so a refused `kubectl` call says which rule refused it.
 * The rules run inside the API server (they cannot be down) on pods, on `pods/status` (which can change labels
 * and annotations too) and on the `pods/ephemeralcontainers` subresource, which `kubectl debug` uses.
 */
export const POD_INTEGRITY_RULES = {
  sidecarPresent: 'sidecar-present',
  injectLabelAdded: 'inject-label-added',
  injectLabelRemoved: 'inject-label-removed',
  agentLabelChanged: 'agent-label-changed',
  injectedAnnotationChanged: 'injected-annotation-changed',
  sidecarChanged: 'sidecar-changed',
  ephemeralContainers: 'ephemeral-containers',
} as const;
const R = POD_INTEGRITY_RULES;

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
          {
            apiGroups: [''],
            apiVersions: ['v1'],
            operations: ['CREATE', 'UPDATE'],
            resources: ['pods', 'pods/status', 'pods/ephemeralcontainers'],
          },
        ],
      },
      validations: [
        {
          // Runs after mutation: a labelled pod without the sidecar means the webhook was skipped or bypassed.
          expression: `request.operation != 'CREATE' || !(${isLabelled}) || size(${sidecars('object')}) > 0`,
          message: `[${R.sidecarPresent}] pods labelled ${LABEL_INJECT}=true must carry the ${SIDECAR_NAME} container: the injection webhook did not run (is the namespace excluded, or the webhook configuration missing?)`,
          reason: 'Forbidden',
        },
        {
          // The sidecar is injected only at creation: a label added later would name an unfenced pod an agent.
          expression: `${onPodUpdate} || ${isInjectedOld} || !${isLabelled}`,
          message: `[${R.injectLabelAdded}] the ${LABEL_INJECT} label cannot be added to an existing pod: the sidecar is injected only when a pod is created; create the pod with the label instead`,
          reason: 'Forbidden',
        },
        {
          expression: `${onPodUpdate} || !${isInjectedOld} || ${isLabelled}`,
          message: `[${R.injectLabelRemoved}] the ${LABEL_INJECT} label cannot be removed from an injected pod; delete the pod and create it without the label instead`,
          reason: 'Forbidden',
        },
        {
          expression: `${onPodUpdate} || !${isInjectedOld} || (has(object.metadata.labels) && '${LABEL_AGENT}' in object.metadata.labels && '${LABEL_AGENT}' in oldObject.metadata.labels && object.metadata.labels['${LABEL_AGENT}'] == oldObject.metadata.labels['${LABEL_AGENT}'])`,
          message: `[${R.agentLabelChanged}] the ${LABEL_AGENT} label of an injected pod cannot change: its identity is fixed for its lifetime`,
          reason: 'Forbidden',
        },
        {
          expression: `${onPodUpdate} || (${annotated('oldObject')} == ${annotated('object')} && (!${annotated('oldObject')} || object.metadata.annotations['${ANNOTATION_INJECTED}'] == oldObject.metadata.annotations['${ANNOTATION_INJECTED}']))`,
          message: `[${R.injectedAnnotationChanged}] the ${ANNOTATION_INJECTED} annotation cannot be added, removed or changed: it is written by the injection webhook when the pod is created`,
          reason: 'Forbidden',
        },
        {
          // Only the image of a live pod's containers may change; for the sidecar not even that.
          expression: `${onPodUpdate} || ${sidecars('object')} == ${sidecars('oldObject')}`,
          message: `[${R.sidecarChanged}] the ${SIDECAR_NAME} container cannot change (image or spec) on a running pod: roll the workload to get a new sidecar`,
          reason: 'Forbidden',
        },
        {
          // kubectl debug --target=<sidecar> would share its process namespace: none at all in agent pods.
          expression: `!has(request.subResource) || request.subResource != 'ephemeralcontainers' || !${agentPodOld} || !has(object.spec.ephemeralContainers) || size(object.spec.ephemeralContainers) == 0`,
          message: `[${R.ephemeralContainers}] ephemeral containers cannot be added to an agent pod: they could attach to the sidecar and read its identity; debug a copy instead (kubectl debug --copy-to creates a new pod, which goes through admission like any other)`,
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

export const ENTITLEMENT_VAP_NAME = 'agentfence-entitlement-integrity';
export const ENTITLEMENT_INTEGRITY_RULE = 'entitlement-writer';

/**
 * Who deletes an AgentEntitlement besides the controller: the garbage collector (an entitlement is owned by its
 * pod) and the namespace controller (namespace deletion), each under its per-controller ServiceAccount, or as
 * the controller manager itself when it runs without per-controller credentials.
 */
export const CONTROL_PLANE_DELETERS = [
  'system:serviceaccount:kube-system:generic-garbage-collector',
  'system:serviceaccount:kube-system:namespace-controller',
  'system:kube-controller-manager',
] as const;

const USERNAME = /^[A-Za-z0-9:._@-]{1,253}$/;
function celString(username: string): string {
  if (!USERNAME.test(username))
    throw new Error(`invalid Kubernetes username for the admission policy: ${JSON.stringify(username)}`);
  return `'${username}'`;
}

/**
 * An AgentEntitlement names the credential Secrets the distribution hub streams to a pod's sidecar, so whoever
 * writes one reads those Secrets. Only the controller writes them (and their status, which the sidecar's
 * acknowledgement reaches through the controller); the control plane may only delete them. No exception for
 * cluster admins: they can already read Secrets, and an exception would be a second way in to keep watch on.
 */
export function entitlementIntegrityPolicy(options: {
  /** The controller's username, e.g. system:serviceaccount:agentfence-system:agentfence-controller. */
  controller: string;
  /** Identities that may delete (never create or change) entitlements; default CONTROL_PLANE_DELETERS. */
  deleters?: readonly string[];
}): Record<string, unknown> {
  const controller = celString(options.controller);
  const deleters = (options.deleters ?? CONTROL_PLANE_DELETERS).map(celString).join(', ');
  return {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'ValidatingAdmissionPolicy',
    metadata: { name: ENTITLEMENT_VAP_NAME, labels: { 'app.kubernetes.io/name': 'agentfence' } },
    spec: {
      failurePolicy: 'Fail',
      matchConstraints: {
        resourceRules: [
          {
            apiGroups: [GROUP],
            apiVersions: ['*'],
            operations: ['CREATE', 'UPDATE', 'DELETE'],
            resources: [AGENT_ENTITLEMENT.plural, `${AGENT_ENTITLEMENT.plural}/status`],
          },
        ],
      },
      validations: [
        {
          expression: `request.userInfo.username == ${controller} || (request.operation == 'DELETE' && request.userInfo.username in [${deleters}])`,
          message: `[${ENTITLEMENT_INTEGRITY_RULE}] AgentEntitlements are written only by the agentfence controller (${options.controller}) and deleted only by it or the garbage collector: they decide which credential Secrets a pod's sidecar receives; change the AgentPolicy instead`,
          reason: 'Forbidden',
        },
      ],
    },
  };
}

/** Every namespace: an entitlement anywhere (the controller's own namespace too) can name that namespace's Secrets. */
export function entitlementIntegrityBinding(
  options: { namespaceMatchLabels?: Record<string, string> } = {},
): Record<string, unknown> {
  return {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'ValidatingAdmissionPolicyBinding',
    metadata: { name: ENTITLEMENT_VAP_NAME, labels: { 'app.kubernetes.io/name': 'agentfence' } },
    spec: {
      policyName: ENTITLEMENT_VAP_NAME,
      validationActions: ['Deny'],
      ...(options.namespaceMatchLabels
        ? { matchResources: { namespaceSelector: { matchLabels: options.namespaceMatchLabels } } }
        : {}),
    },
  };
}
