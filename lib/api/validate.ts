/**
 * A structural validator over the Schema objects in schema.ts, so that offline tools (`agentfence render`)
 * refuse what the API server would refuse without a second copy of the rules. It checks types, required
 * fields, enums, bounds, patterns and unknown fields. CEL rules are not evaluated in general; the few CEL
 * shapes the CRD uses for "exactly one of" and "not empty" are recognized and checked with the CRD's own
 * message. Everything else the API server still checks at apply time.
 */
import type { Schema, Validation } from './schema.ts';

export interface SchemaError {
  /** A JSON path like spec.egress[0].to. */
  path: string;
  message: string;
}

const ONE_OF = /^\[((?:has\(self\.\w+\)(?:, )?)+)\]\.filter\(x, x\)\.size\(\) == 1$/;
const NON_EMPTY =
  /^\(has\(self\.(\w+)\) && size\(self\.\1\) > 0\)(?: \|\| \(has\(self\.\w+\) && size\(self\.\w+\) > 0\))*$/;

function sizeOf(value: unknown): number {
  if (Array.isArray(value)) return value.length;
  if (typeof value === 'string') return value.length;
  if (value !== null && typeof value === 'object') return Object.keys(value).length;
  return 0;
}

/** The outcome of a CEL rule we understand, or undefined for rules left to the API server. */
function evaluate(rule: Validation, self: Record<string, unknown>): boolean | undefined {
  const oneOf = ONE_OF.exec(rule.rule);
  if (oneOf?.[1]) {
    const fields = [...oneOf[1].matchAll(/has\(self\.(\w+)\)/g)].map((m) => m[1] ?? '');
    return fields.filter((f) => self[f] !== undefined).length === 1;
  }
  if (NON_EMPTY.test(rule.rule)) {
    const fields = [...rule.rule.matchAll(/has\(self\.(\w+)\)/g)].map((m) => m[1] ?? '');
    return fields.some((f) => self[f] !== undefined && sizeOf(self[f]) > 0);
  }
  return undefined;
}

function typeOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number';
  return typeof value;
}

export function validateSchema(schema: Schema, value: unknown, path: string): SchemaError[] {
  const errors: SchemaError[] = [];
  const fail = (message: string, at = path): void => void errors.push({ path: at, message });
  const actual = typeOf(value);
  if (schema.type && actual !== schema.type) {
    fail(`must be of type ${schema.type} (got ${actual})`);
    return errors;
  }
  if (schema.enum && !schema.enum.includes(value as string)) {
    fail(
      `unsupported value ${JSON.stringify(value)}: supported values: ${schema.enum.map((e) => JSON.stringify(e)).join(', ')}`,
    );
  }
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum)
      fail(`must be greater than or equal to ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) fail(`must be less than or equal to ${schema.maximum}`);
  }
  if (typeof value === 'string') {
    if (schema.minLength !== undefined && value.length < schema.minLength)
      fail(`must be at least ${schema.minLength} characters`);
    if (schema.maxLength !== undefined && value.length > schema.maxLength)
      fail(`must be at most ${schema.maxLength} characters`);
    if (schema.pattern !== undefined && !new RegExp(schema.pattern).test(value)) fail(`must match ${schema.pattern}`);
    if (schema.format === 'date-time' && Number.isNaN(Date.parse(value))) fail('must be an RFC 3339 date-time');
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems)
      fail(`must have at least ${schema.minItems} items`);
    if (schema.maxItems !== undefined && value.length > schema.maxItems)
      fail(`must have at most ${schema.maxItems} items`);
    if (schema.items) {
      const itemSchema = schema.items;
      value.forEach((item: unknown, i) => errors.push(...validateSchema(itemSchema, item, `${path}[${i}]`)));
    }
    const keys = schema['x-kubernetes-list-map-keys'];
    if (schema['x-kubernetes-list-type'] === 'map' && keys) {
      const seen = new Set<string>();
      value.forEach((item: unknown, i) => {
        const key = JSON.stringify(keys.map((k) => (item as Record<string, unknown> | null)?.[k]));
        if (seen.has(key)) fail(`duplicate entry for ${keys.join(', ')} ${key}`, `${path}[${i}]`);
        seen.add(key);
      });
    }
  }
  if (actual === 'object') {
    const object = value as Record<string, unknown>;
    if (schema.maxProperties !== undefined && Object.keys(object).length > schema.maxProperties) {
      fail(`must have at most ${schema.maxProperties} properties`);
    }
    for (const field of schema.required ?? [])
      if (object[field] === undefined) fail('Required value', `${path}.${field}`);
    for (const [key, child] of Object.entries(object)) {
      const childSchema = schema.properties?.[key] ?? schema.additionalProperties;
      if (childSchema) errors.push(...validateSchema(childSchema, child, `${path}.${key}`));
      else if (schema.properties) fail(`unknown field "${path}.${key}"`, `${path}.${key}`);
    }
    for (const rule of schema['x-kubernetes-validations'] ?? []) {
      if (evaluate(rule, object) === false) fail(rule.message ?? `failed rule: ${rule.rule}`);
    }
  }
  return errors;
}
