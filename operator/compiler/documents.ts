/**
 * Turns Kubernetes manifests (parsed YAML documents) into a CompileInput: AgentPolicies validated against the
 * CRD schema, Pods as they are, workload pod templates as synthesized pods, Namespaces and Services. Errors name
 * the source, the document index and the field, so a person can find the line to fix.
 */
import { credentialValue, type CredentialSecretInput } from './credentials.ts';
import { LABEL_CREDENTIAL } from '../../lib/api/constants.ts';
import type { AgentPolicy } from '../../lib/api/types.generated.ts';
import { API_VERSION } from '../../lib/api/constants.ts';
import { agentPolicySpec } from '../../lib/api/schema.ts';
import { validateSchema } from '../../lib/api/validate.ts';
import type { CompileInput, ConfigMapInput, Namespace, PodInput, Service } from './types.ts';

export interface SourceDocument {
  /** Where it came from: a file name. */
  source: string;
  /** 0-based position of the document in its file (or in a List's items, as "3.items[1]"). */
  index: string;
  value: unknown;
}

export class ManifestError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid input:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    this.name = 'ManifestError';
    this.problems = problems;
  }
}

/** Kinds whose pod template becomes one synthesized pod (no IP, no uid: the pod does not exist yet). */
const WORKLOAD_TEMPLATE: Record<string, (spec: Record<string, unknown>) => unknown> = {
  Deployment: (s) => s.template,
  StatefulSet: (s) => s.template,
  DaemonSet: (s) => s.template,
  ReplicaSet: (s) => s.template,
  Job: (s) => s.template,
  CronJob: (s) =>
    ((s.jobTemplate as Record<string, unknown> | undefined)?.spec as Record<string, unknown> | undefined)?.template,
};

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

export interface ManifestSet extends CompileInput {
  /** Kinds that were present but play no part in compiling (ConfigMaps, Secrets, ...). */
  ignored: string[];
}

export function collectManifests(documents: readonly SourceDocument[]): ManifestSet {
  const problems: string[] = [];
  const policies: AgentPolicy[] = [];
  const pods: PodInput[] = [];
  const namespaces: Namespace[] = [];
  const services: Service[] = [];
  const configMaps: ConfigMapInput[] = [];
  const credentialSecrets: CredentialSecretInput[] = [];
  const unlabelledCredentialSecrets: string[] = [];
  const ignored: string[] = [];

  const visit = (doc: SourceDocument): void => {
    const { value } = doc;
    if (value === null || value === undefined) return; // an empty document between two '---'
    const kind = isObject(value) && typeof value.kind === 'string' ? value.kind : undefined;
    const where = (field: string): string =>
      `${doc.source}: document ${doc.index}${kind ? ` (${kind})` : ''}: ${field}`;
    if (!isObject(value) || kind === undefined) {
      problems.push(where('kind: Required value (every document must be a Kubernetes object)'));
      return;
    }
    if (kind === 'List') {
      const items = Array.isArray(value.items) ? (value.items as unknown[]) : [];
      items.forEach((item, i) => visit({ source: doc.source, index: `${doc.index}.items[${i}]`, value: item }));
      return;
    }
    const metadata = isObject(value.metadata) ? value.metadata : undefined;
    const name = metadata?.name;
    if (typeof name !== 'string' || name === '') {
      problems.push(where('metadata.name: Required value'));
      return;
    }
    const namespace = typeof metadata?.namespace === 'string' ? metadata.namespace : 'default';
    const labels = isObject(metadata?.labels) ? metadata.labels : undefined;
    if (labels && !Object.values(labels).every((v) => typeof v === 'string')) {
      problems.push(where('metadata.labels: label values must be strings (quote "true")'));
      return;
    }
    switch (kind) {
      case 'AgentPolicy': {
        if (value.apiVersion !== API_VERSION) {
          problems.push(where(`apiVersion: must be ${API_VERSION} (got ${JSON.stringify(value.apiVersion)})`));
          return;
        }
        const errors =
          value.spec === undefined
            ? [{ path: 'spec', message: 'Required value' }]
            : validateSchema(agentPolicySpec, value.spec, 'spec');
        for (const e of errors) problems.push(where(`${e.path}: ${e.message}`));
        if (errors.length === 0)
          policies.push({
            ...(value as unknown as AgentPolicy),
            metadata: { ...(metadata as AgentPolicy['metadata']), namespace },
          });
        return;
      }
      case 'Pod':
        pods.push({
          ...(value as unknown as PodInput),
          metadata: { ...(metadata as PodInput['metadata']), namespace },
        });
        return;
      case 'Service':
        services.push({
          ...(value as unknown as Service),
          metadata: { ...(metadata as Service['metadata']), namespace },
        });
        return;
      case 'Namespace':
        namespaces.push(value as unknown as Namespace);
        return;
      case 'ConfigMap': {
        // Read only for rules' caBundle (and only when labelled agentfence.io/ca-bundle=true, see cluster-index.ts).
        const data = isObject(value.data) ? value.data : {};
        if (!Object.values(data).every((v) => typeof v === 'string')) {
          problems.push(where('data: ConfigMap values must be strings'));
          return;
        }
        configMaps.push({
          metadata: { ...(metadata as ConfigMapInput['metadata']), namespace },
          data: data as Record<string, string>,
        });
        return;
      }
      case 'Secret': {
        // Read only for rules' credentials: which keys hold a usable value, never the values (and only when
        // labelled agentfence.io/credential=true, see compiler/credentials.ts).
        const data = isObject(value.data) ? value.data : {};
        const stringData = isObject(value.stringData) ? value.stringData : {};
        const usable = [
          ...Object.entries(data).filter(([, v]) => typeof v === 'string' && credentialValue(v) !== undefined),
          ...Object.entries(stringData).filter(
            ([, v]) => typeof v === 'string' && credentialValue(Buffer.from(v).toString('base64')) !== undefined,
          ),
        ].map(([k]) => k);
        if (labels?.[LABEL_CREDENTIAL] !== 'true') unlabelledCredentialSecrets.push(`${namespace}/${name}`);
        credentialSecrets.push({
          metadata: { ...(metadata as ConfigMapInput['metadata']), namespace },
          keys: [...new Set(usable)].sort(),
        });
        return;
      }
    }
    const templateOf = WORKLOAD_TEMPLATE[kind];
    if (!templateOf) {
      ignored.push(kind);
      return;
    }
    const template = isObject(value.spec) ? templateOf(value.spec) : undefined;
    if (!isObject(template)) {
      problems.push(
        where(kind === 'CronJob' ? 'spec.jobTemplate.spec.template: Required value' : 'spec.template: Required value'),
      );
      return;
    }
    const templateMeta = isObject(template.metadata) ? template.metadata : {};
    pods.push({
      metadata: {
        name,
        namespace,
        labels: (isObject(templateMeta.labels) ? templateMeta.labels : {}) as Record<string, string>,
      },
      spec: isObject(template.spec) ? template.spec : {},
    });
  };

  for (const doc of documents) visit(doc);
  if (problems.length > 0) throw new ManifestError(problems);
  return {
    policies,
    pods,
    namespaces,
    services,
    configMaps,
    credentialSecrets,
    unlabelledCredentialSecrets,
    ignored: [...new Set(ignored)].sort(),
  };
}
