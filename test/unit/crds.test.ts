import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { renderCrdFiles, renderTypesFile } from '../../lib/api/codegen.ts';
import { agentEntitlementCRD, agentPolicyCRD, type Schema } from '../../lib/api/schema.ts';
import { format } from 'prettier';

const root = new URL('../../', import.meta.url);

describe('CRD source of truth', () => {
  it('the committed crds/*.yaml are exactly what lib/api/schema.ts renders (run npm run gen:crds)', () => {
    for (const file of renderCrdFiles()) {
      expect(readFileSync(new URL(file.path, root), 'utf8'), file.path).toBe(file.content);
    }
  });

  it('the committed TypeScript types are exactly what lib/api/schema.ts renders (run npm run gen:crds)', async () => {
    const file = renderTypesFile();
    const config = JSON.parse(readFileSync(new URL('.prettierrc.json', root), 'utf8')) as Record<string, unknown>;
    const expected = await format(file.content, { ...config, parser: 'typescript' });
    expect(readFileSync(new URL(file.path, root), 'utf8')).toBe(expected);
  });

  // The API server estimates CEL cost from these bounds; an unbounded list or string anywhere makes the
  // CRD either rejected or expensive to validate. Check every node of both schemas.
  it.each([
    ['AgentPolicy', agentPolicyCRD],
    ['AgentEntitlement', agentEntitlementCRD],
  ])('%s: every list has maxItems and every free-form string has maxLength', (_, crd) => {
    const problems: string[] = [];
    const walk = (schema: Schema, path: string): void => {
      if (schema.type === 'array' && schema.maxItems === undefined) problems.push(`${path}: array without maxItems`);
      if (
        schema.type === 'string' &&
        schema.maxLength === undefined &&
        !schema.enum &&
        !schema.format &&
        !path.endsWith('.apiVersion') &&
        !path.endsWith('.kind')
      ) {
        problems.push(`${path}: string without maxLength`);
      }
      if (schema.type === 'object' && schema.additionalProperties && schema.maxProperties === undefined) {
        problems.push(`${path}: map without maxProperties`);
      }
      for (const [k, v] of Object.entries(schema.properties ?? {})) walk(v, `${path}.${k}`);
      if (schema.items) walk(schema.items, `${path}[]`);
      if (schema.additionalProperties) walk(schema.additionalProperties, `${path}{}`);
    };
    const spec = crd.spec as { versions: { schema: { openAPIV3Schema: Schema } }[] };
    const version = spec.versions[0];
    if (!version) throw new Error('no version');
    walk(version.schema.openAPIV3Schema, '');
    expect(problems).toEqual([]);
  });

  it('serves the names, short names, category and printer columns the brief fixes', () => {
    const policy = parse(readFileSync(new URL('crds/agentfence.io_agentpolicies.yaml', root), 'utf8')) as {
      spec: {
        names: { shortNames: string[]; categories: string[] };
        versions: { additionalPrinterColumns: { name: string }[]; subresources: object }[];
      };
    };
    expect(policy.spec.names.shortNames).toEqual(['ap']);
    expect(policy.spec.names.categories).toEqual(['agentfence']);
    expect(policy.spec.versions[0]?.subresources).toEqual({ status: {} });
    expect(policy.spec.versions[0]?.additionalPrinterColumns.map((c) => c.name)).toEqual([
      'Ready',
      'Mode',
      'Agents',
      'InSync',
      'Age',
    ]);
    const ent = parse(
      readFileSync(new URL('crds/agentfence.io_agententitlements.yaml', root), 'utf8'),
    ) as typeof policy;
    expect(ent.spec.names.shortNames).toEqual(['ae']);
    expect(ent.spec.versions[0]?.additionalPrinterColumns.map((c) => c.name)).toEqual([
      'Pod',
      'Agent',
      'Revision',
      'InSync',
      'Expires',
    ]);
  });
});
