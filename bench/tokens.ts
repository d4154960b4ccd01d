// Token issuance and verification throughput of one process (one controller replica, one verifier).
// Target (PERFORMANCE.md): issuance >= 1,000 tokens/s per replica.
import { generateSigningKey, publicJwks, type KeySet } from '../operator/identity/keys.ts';
import { TokenIssuer } from '../operator/identity/issuer.ts';
import { createAgentVerifier } from '../lib/verify/index.ts';

const N = 5_000;
const keys: KeySet = { current: await generateSigningKey(Date.now() - 1000, 86_400_000), previous: [] };
const issuer = new TokenIssuer({ issuer: 'https://issuer', trustDomain: 'cluster.local', keys: () => keys });
const verifier = createAgentVerifier({ issuer: 'https://issuer', audience: 'orders-api', jwks: publicJwks(keys) });
const req = {
  namespace: 'support',
  agent: 'support-agent',
  podName: 'support-agent-0',
  podUID: '5e0bd49b-0000-4000-8000-000000000001',
  serviceAccountName: 'support-agent',
  revision: 'sha256:ab12',
  audience: 'orders-api',
  ttlSeconds: 300,
};
await issuer.issue(req); // warm up: key import

let start = performance.now();
const tokens: string[] = [];
for (let i = 0; i < N; i++) tokens.push((await issuer.issue(req)).token);
const issueMs = performance.now() - start;

start = performance.now();
for (const t of tokens) await verifier.verify(t);
const verifyMs = performance.now() - start;

const rate = (ms: number): number => Math.round((N / ms) * 1000);
console.log('| operation | tokens | total ms | per second | target | ratio to target |');
console.log('|---|---|---|---|---|---|');
console.log(
  `| issue (ES256 sign) | ${N} | ${issueMs.toFixed(0)} | ${rate(issueMs)} | 1000 | ${(rate(issueMs) / 1000).toFixed(1)}x |`,
);
console.log(`| verify (agentfence/verify) | ${N} | ${verifyMs.toFixed(0)} | ${rate(verifyMs)} | - | - |`);
