/** One list of internal and never-granted ranges (lib/ip.ts), and every layer that refuses them uses exactly it. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { INTERNAL_RANGES, NEVER_GRANTED, containsCidr, nonPublicRanges, parseCidr, type Cidr } from '../../lib/ip.ts';
import { compile } from '../../operator/compiler/index.ts';
import { judgeAddress } from '../../sidecar/addresses.ts';
import type { CompiledRule } from '../../sidecar/match.ts';
import { NOW, agentPod, namespace, policy } from '../support/compiler-fixtures.ts';

const root = new URL('../../', import.meta.url);
const cidr = (text: string): Cidr => {
  const parsed = parseCidr(text);
  if (!parsed) throw new Error(`not a CIDR: ${text}`);
  return parsed;
};
const ALL = [...NEVER_GRANTED, ...INTERNAL_RANGES];
/** An address inside a range: its network address, and its last one. */
function addressesIn(range: string): string[] {
  const c = cidr(range);
  const width = c.family === 4 ? 32 : 128;
  const last = c.network | ((1n << BigInt(width - c.prefix)) - 1n);
  const format = (v: bigint): string =>
    c.family === 4
      ? [24n, 16n, 8n, 0n].map((s) => String((v >> s) & 255n)).join('.')
      : Array.from({ length: 8 }, (_, i) => ((v >> BigInt(112 - 16 * i)) & 0xffffn).toString(16)).join(':');
  return [format(c.network), format(last)];
}

function publicRule(): { v4: string[]; v6: string[] } {
  const out = compile(
    {
      policies: [
        policy('agents', 'bot', {
          egress: [{ name: 'llm', to: { hosts: ['api.example.com'] }, ports: [{ port: 443 }] }],
        }),
      ],
      pods: [agentPod('agents', 'bot-1', 'bot')],
      namespaces: [namespace('agents')],
      services: [],
    },
    { now: NOW },
  );
  const peers = out.networkPolicies.flatMap((np) => (np.spec.egress ?? []).flatMap((r) => r.to ?? []));
  const block = (all: string): string[] => {
    const found = peers.find((p) => p.ipBlock?.cidr === all)?.ipBlock?.except;
    if (!found) throw new Error(`no ${all} rule in ${JSON.stringify(peers)}`);
    return found;
  };
  return { v4: block('0.0.0.0/0'), v6: block('::/0') };
}

describe('the internal address ranges', () => {
  it('nonPublicRanges covers every range of its family, with none inside another', () => {
    for (const family of [4, 6] as const) {
      const list = nonPublicRanges(family).map(cidr);
      expect(list.every((c) => c.family === family)).toBe(true);
      for (const a of list) for (const b of list) if (a !== b) expect(containsCidr(a, b)).toBe(false);
    }
  });

  it("the compiler's public-address rule excepts exactly that list, and so every internal range", () => {
    const { v4, v6 } = publicRule();
    expect(v4).toEqual(nonPublicRanges(4));
    expect(v6).toEqual(nonPublicRanges(6));
    const except = [...v4, ...v6].map(cidr);
    const uncovered = ALL.filter((r) => r !== '::ffff:0:0/96' && !except.some((e) => containsCidr(e, cidr(r))));
    expect(uncovered).toEqual([]);
  });

  it("the CRD's CEL rule (and the chart's copy) refuses every never-granted range", () => {
    for (const path of [
      'crds/agentfence.io_agentpolicies.yaml',
      'charts/agentfence/templates/crds/agentfence.io_agentpolicies.yaml',
    ]) {
      const text = readFileSync(new URL(path, root), 'utf8');
      const rules = [...text.matchAll(/rule: "(!isCIDR\(self\) \|\| !\(cidr.*)"$/gm)].map((m) => m[1] ?? '');
      expect(rules.length, path).toBeGreaterThan(0);
      for (const rule of rules) {
        const ranges = [...rule.matchAll(/cidr\('([^']+)'\)/g)].map((m) => m[1]);
        expect(ranges, path).toEqual([...NEVER_GRANTED]);
      }
    }
    expect(parse(readFileSync(new URL('crds/agentfence.io_agentpolicies.yaml', root), 'utf8'))).toBeTruthy();
  });

  it('the sidecar refuses an address in every range unless a rule grants it, and never-granted ones always', () => {
    const rule = (cidrs: string[]): CompiledRule => ({
      policy: 'p',
      rule: 'r',
      mode: 'Enforce',
      cidrs: cidrs.map(cidr),
      ports: [{ from: 443, to: 443 }],
    });
    for (const range of INTERNAL_RANGES) {
      for (const address of addressesIn(range)) {
        expect(judgeAddress(address, rule([])), `${address} in ${range}`).toEqual({
          ok: false,
          reason: 'private_address',
        });
        // An IPv4-mapped address is judged as the IPv4 address too: grant that family as well.
        expect(judgeAddress(address, rule([range, '0.0.0.0/0'])), `${address} granted by ${range}`).toEqual({
          ok: true,
        });
      }
    }
    for (const range of NEVER_GRANTED) {
      for (const address of addressesIn(range)) {
        expect(judgeAddress(address, rule([range])), `${address} in ${range}`).toEqual({
          ok: false,
          reason: 'metadata_address',
        });
      }
    }
    // Just outside the ranges stays public.
    for (const address of ['11.0.0.1', '100.128.0.1', '2001:db8::1', '8.8.8.8']) {
      expect(judgeAddress(address, rule([])), address).toEqual({ ok: true });
    }
  });
});
