/**
 * Renders the API source of truth (schema.ts) into the CRD manifests and the TypeScript types.
 * Pure: `hack/gen-crds.ts` writes the result, `test/unit/crds.test.ts` checks the committed files match it.
 */
import { stringify } from 'yaml';
import {
  agentEntitlementCRD,
  agentEntitlementSpec,
  agentEntitlementStatus,
  agentPolicyCRD,
  agentPolicySpec,
  agentPolicyStatus,
  typeDocs,
  typeNames,
  type Schema,
} from './schema.ts';
import { AGENT_ENTITLEMENT, AGENT_POLICY, API_VERSION } from './constants.ts';

const HEADER = 'Generated from lib/api/schema.ts by `npm run gen:crds`. Do not edit.';

export interface GeneratedFile {
  path: string;
  content: string;
}

export function renderCrdFiles(): GeneratedFile[] {
  const crds = [
    ['agentfence.io_agentpolicies.yaml', agentPolicyCRD],
    ['agentfence.io_agententitlements.yaml', agentEntitlementCRD],
  ] as const;
  return [
    ...crds.map(([file, crd]) => ({ path: `crds/${file}`, content: renderYaml(crd) })),
    // The chart ships the same CRDs as templates, so that `helm upgrade` upgrades them; see renderChartCrd.
    ...crds.map(([file, crd]) => ({ path: `charts/agentfence/templates/crds/${file}`, content: renderChartCrd(crd) })),
  ];
}

/**
 * A CRD as a chart template (the cert-manager convention: `crds.install`, `crds.keep`). It is rendered only
 * when the cluster does not have it yet or this release owns it, so `helm install` works where the CRDs
 * already exist (applied with kubectl, left by another release, installed by `agentfence local-cluster`):
 * those are left as they are (NOTES.txt says so). `helm template` cannot look, and always renders it.
 */
function renderChartCrd(crd: Record<string, unknown>): string {
  const metadata = crd.metadata as Record<string, unknown>;
  const name = String(metadata.name);
  const kept = { ...crd, metadata: { ...metadata, annotations: { KEEP: 'KEEP' } } };
  const body = renderYaml(kept).replace(
    '    KEEP: KEEP\n',
    '    {{- if .Values.crds.keep }}\n    helm.sh/resource-policy: keep\n    {{- end }}\n',
  );
  return [
    `{{- if and .Values.crds.install (include "agentfence.crdOwned" (list . "${name}")) }}`,
    body.trimEnd(),
    '{{- end }}',
    '',
  ].join('\n');
}

function renderYaml(doc: unknown): string {
  return `# ${HEADER}\n${stringify(doc, { lineWidth: 0 })}`;
}

export function renderTypesFile(): GeneratedFile {
  const emitted = new Map<string, string>();
  const typeOf = (schema: Schema, indent: string): string => {
    const name = typeNames.get(schema);
    if (name !== undefined) {
      if (!emitted.has(name)) {
        emitted.set(name, ''); // reserve first: recursion and ordering are stable
        emitted.set(name, declaration(name, schema));
      }
      return name;
    }
    return inlineType(schema, indent);
  };
  const declaration = (name: string, schema: Schema): string => {
    const doc = jsdoc(typeDocs.get(name) ?? schema.description, '');
    if (schema.type === 'object' && schema.properties)
      return `${doc}export interface ${name} ${objectBody(schema, '')}\n`;
    return `${doc}export type ${name} = ${inlineType(schema, '')};\n`;
  };
  const objectBody = (schema: Schema, indent: string): string => {
    const required = new Set(schema.required ?? []);
    const lines = Object.entries(schema.properties ?? {}).map(([key, prop]) => {
      const optional = required.has(key) ? '' : '?';
      return `${jsdoc(prop.description, `${indent}  `)}${indent}  ${key}${optional}: ${typeOf(prop, `${indent}  `)};`;
    });
    return `{\n${lines.join('\n')}\n${indent}}`;
  };
  const inlineType = (schema: Schema, indent: string): string => {
    if (schema.enum) return schema.enum.map((v) => `'${v}'`).join(' | ');
    switch (schema.type) {
      case 'string':
        return 'string';
      case 'integer':
        return 'number';
      case 'boolean':
        return 'boolean';
      case 'array': {
        if (!schema.items) throw new Error('array schema without items');
        const item = typeOf(schema.items, indent);
        return item.includes(' ') ? `(${item})[]` : `${item}[]`;
      }
      case 'object':
        if (schema.properties) return objectBody(schema, indent);
        if (schema.additionalProperties) return `Record<string, ${typeOf(schema.additionalProperties, indent)}>`;
        return 'Record<string, unknown>';
      case undefined:
        throw new Error('schema without type');
    }
  };

  for (const root of [agentPolicySpec, agentPolicyStatus, agentEntitlementSpec, agentEntitlementStatus])
    typeOf(root, '');
  const resource = (kind: string, spec: string, status: string): string =>
    `export interface ${kind} {\n  apiVersion: '${API_VERSION}';\n  kind: '${kind}';\n  metadata: ObjectMeta;\n  spec: ${spec};\n  status?: ${status};\n}\n`;
  const body = [
    `// ${HEADER}`,
    "import type { ObjectMeta } from './meta.ts';",
    '',
    ...emitted.values(),
    resource(AGENT_POLICY.kind, 'AgentPolicySpec', 'AgentPolicyStatus'),
    resource(AGENT_ENTITLEMENT.kind, 'AgentEntitlementSpec', 'AgentEntitlementStatus'),
  ].join('\n');
  return { path: 'lib/api/types.generated.ts', content: body };
}

function jsdoc(description: string | undefined, indent: string): string {
  if (!description) return '';
  return `${indent}/** ${description.replaceAll('*/', '*\\/')} */\n`;
}
