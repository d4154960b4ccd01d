/** The compiler's building blocks: IP arithmetic, selectors, the label index, canonical JSON, names. */
import { describe, expect, it } from 'vitest';
import type { LabelSelector } from '../../lib/api/types.generated.ts';
import { boundedName, canonicalJSON, sha256Revision } from '../../operator/compiler/canonical.ts';
import { containsCidr, hostCidr, metadataExcept, parseCidr, parseIP } from '../../lib/ip.ts';
import { calleeIngressName, labelValue, policyObjectName } from '../../operator/compiler/names.ts';
import { LabelIndex, andLabels, compileSelector } from '../../operator/compiler/selectors.ts';

describe('ip', () => {
  it('parses IPv4, IPv6 (compressed, embedded IPv4) and refuses garbage', () => {
    expect(parseIP('10.1.2.3')).toEqual({ family: 4, value: 0x0a010203n });
    expect(parseIP('::1')).toEqual({ family: 6, value: 1n });
    expect(parseIP('fd00:ec2::254')?.value).toBe(0xfd000ec2000000000000000000000254n);
    expect(parseIP('::ffff:1.2.3.4')?.value).toBe(0xffff01020304n);
    for (const bad of ['10.1.2', '256.0.0.1', '1:2:3:4:5:6:7:8:9', '1::2::3', 'x::1', ''])
      expect(parseIP(bad), bad).toBeUndefined();
    expect(parseCidr('10.0.0.0/33')).toBeUndefined();
    expect(parseCidr('10.0.0.0')).toBeUndefined();
  });

  it('tests containment within a family only', () => {
    const c = (s: string) => {
      const parsed = parseCidr(s);
      if (!parsed) throw new Error(s);
      return parsed;
    };
    expect(containsCidr(c('0.0.0.0/0'), c('169.254.0.0/16'))).toBe(true);
    expect(containsCidr(c('169.0.0.0/8'), c('169.254.0.0/16'))).toBe(true);
    expect(containsCidr(c('169.254.0.0/17'), c('169.254.0.0/16'))).toBe(false);
    expect(containsCidr(c('::/0'), c('169.254.0.0/16'))).toBe(false);
    expect(containsCidr(c('fe80::/9'), c('fe80::/10'))).toBe(true);
  });

  it('lists the metadata ranges inside a grant and formats host CIDRs', () => {
    expect(metadataExcept('128.0.0.0/1')).toEqual(['169.254.0.0/16']);
    expect(metadataExcept('10.0.0.0/8')).toEqual([]);
    expect(metadataExcept('fc00::/7')).toEqual(['fd00:ec2::254/128']);
    expect(metadataExcept('fe00::/7')).toEqual(['fe80::/10']);
    expect(hostCidr('10.0.0.1')).toBe('10.0.0.1/32');
    expect(hostCidr('2001:db8::1')).toBe('2001:db8::1/128');
    expect(hostCidr('nope')).toBeUndefined();
  });
});

describe('selectors', () => {
  it('evaluates matchLabels and every matchExpressions operator', () => {
    const s = compileSelector({
      matchLabels: { app: 'a' },
      matchExpressions: [
        { key: 'tier', operator: 'In', values: ['x', 'y'] },
        { key: 'env', operator: 'NotIn', values: ['prod'] },
        { key: 'team', operator: 'Exists' },
        { key: 'legacy', operator: 'DoesNotExist' },
      ],
    });
    expect(s({ app: 'a', tier: 'x', team: 't' })).toBe(true);
    expect(s({ app: 'a', tier: 'x', team: 't', env: 'dev' })).toBe(true);
    expect(s({ app: 'a', tier: 'z', team: 't' })).toBe(false);
    expect(s({ app: 'a', tier: 'x', team: 't', env: 'prod' })).toBe(false);
    expect(s({ app: 'a', tier: 'x' })).toBe(false);
    expect(s({ app: 'a', tier: 'x', team: 't', legacy: '' })).toBe(false);
    expect(compileSelector({})({ any: 'thing' })).toBe(true);
  });

  it('intersects selectors without silently dropping a conflicting user label', () => {
    expect(andLabels({ matchLabels: { a: '1' } }, { 'agentfence.io/inject': 'true' })).toEqual({
      matchLabels: { a: '1', 'agentfence.io/inject': 'true' },
    });
    const conflicting = andLabels(
      { matchLabels: { 'agentfence.io/inject': 'false' } },
      { 'agentfence.io/inject': 'true' },
    );
    expect(compileSelector(conflicting)({ 'agentfence.io/inject': 'true' })).toBe(false);
    expect(compileSelector(conflicting)({ 'agentfence.io/inject': 'false' })).toBe(false);
  });

  it('indexes by label and selects the same pods as a full scan', () => {
    const index = new LabelIndex<{ labels: Record<string, string>; id: number }>();
    const items = Array.from({ length: 50 }, (_, id) => ({ id, labels: { app: `a${id % 5}`, v: `${id % 3}` } }));
    for (const item of items) index.add(item);
    const selectors: LabelSelector[] = [
      { matchLabels: { app: 'a1' } },
      { matchLabels: { app: 'a1', v: '2' } },
      { matchLabels: { app: 'zz' } },
      {},
    ];
    for (const selector of selectors) {
      const scan = items.filter((i) => compileSelector(selector)(i.labels)).map((i) => i.id);
      expect(index.select(selector).map((i) => i.id)).toEqual(scan);
    }
  });
});

describe('canonical JSON and names', () => {
  it('sorts keys at every depth and drops undefined, so equal values hash equally', () => {
    expect(canonicalJSON({ b: 1, a: { d: [1, { y: 2, x: undefined, w: 1 }], c: 'x' } })).toBe(
      '{"a":{"c":"x","d":[1,{"w":1,"y":2}]},"b":1}',
    );
    expect(sha256Revision({ a: 1, b: 2 })).toBe(sha256Revision({ b: 2, a: 1 }));
    expect(sha256Revision([1, 2])).not.toBe(sha256Revision([2, 1]));
  });

  it('bounds names and label values with a hash of the full name', () => {
    expect(policyObjectName('x')).toBe('agentfence-x');
    const a = boundedName(`${'a'.repeat(300)}1`);
    const b = boundedName(`${'a'.repeat(300)}2`);
    expect(a.length).toBeLessThanOrEqual(253);
    expect(a).not.toBe(b);
    expect(labelValue('p'.repeat(100))).toMatch(/^p{52}-[0-9a-f]{10}$/);
    expect(calleeIngressName('ns', 'p', 'r')).toBe(calleeIngressName('ns', 'p', 'r'));
    expect(calleeIngressName('ns', 'p', 'r')).not.toBe(calleeIngressName('other', 'p', 'r'));
    expect(calleeIngressName('ns', 'p'.repeat(253), 'r').length).toBeLessThanOrEqual(253);
  });
});
