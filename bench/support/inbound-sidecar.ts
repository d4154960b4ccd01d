// The sidecar with an inbound gate in front of an app port, for the inbound benchmark (its own process): static
// entitlements (one inbound grant for a caller agent, one egress rule to the same app), agent tokens verified
// against a local key set (what the controller's JWKS is in a cluster). Prints {gatePort, proxyPort, token}.
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../lib/log.ts';
import { createAgentVerifier } from '../../lib/verify/index.ts';
import { createAuditSink } from '../../sidecar/audit.ts';
import { startSidecar } from '../../sidecar/runtime.ts';
import { createWriteStream } from 'node:fs';
import { BENCH_POD, freePort } from './sidecar.ts';

const appPort = Number(process.argv[2]);
const ISSUER = 'https://bench.issuer';
const CALLER = 'spiffe://cluster.local/ns/bench/agent/caller';
const { publicKey, privateKey } = await generateKeyPair('ES256');
const jwk = { ...(await exportJWK(publicKey)), kid: 'bench', alg: 'ES256', use: 'sig' };
const now = Math.floor(Date.now() / 1000);
const token = await new SignJWT({
  'agentfence.io': { ns: 'bench', pod: { name: 'caller-0', uid: 'u-caller' }, sa: 'caller', rev: 'r' },
})
  .setProtectedHeader({ alg: 'ES256', kid: 'bench', typ: 'JWT' })
  .setIssuer(ISSUER)
  .setSubject(CALLER)
  .setAudience(BENCH_POD.spiffeID)
  .setIssuedAt(now)
  .setNotBefore(now)
  .setExpirationTime(now + 600)
  .setJti('bench')
  .sign(privateKey);

const work = mkdtempSync(join(tmpdir(), 'agentfence-bench-inbound-'));
const file = join(work, 'entitlement.json');
writeFileSync(
  file,
  JSON.stringify({
    apiVersion: 'agentfence.io/v1alpha1',
    kind: 'AgentEntitlement',
    metadata: { name: 'bench', namespace: 'bench' },
    spec: {
      ...BENCH_POD,
      egress: [
        {
          policy: 'bench',
          rule: 'app',
          mode: 'Enforce',
          cidrs: ['127.0.0.1/32'],
          ports: [{ port: appPort, protocol: 'TCP' }],
          http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/' }] }],
        },
      ],
      ingress: [
        {
          policy: 'bench',
          rule: 'caller',
          mode: 'Enforce',
          ports: [{ port: appPort, protocol: 'TCP' }],
          agents: [{ spiffeID: CALLER, pods: ['u-caller'] }],
          http: [{ methods: ['GET'], paths: [{ type: 'PathPrefix', value: '/' }] }],
        },
      ],
    },
  }),
);
const gate = await freePort();
const sidecar = await startSidecar(
  {
    listen: { host: '127.0.0.1', port: 0 },
    adminListen: { host: '127.0.0.1', port: 0 },
    mode: { kind: 'static', file },
    inbound: { host: '127.0.0.1', gates: [{ gate: 15006, port: appPort }], listenPorts: [gate] },
    maxStalenessMs: 60_000,
    pod: { name: 'bench', namespace: 'bench' },
  },
  silentLogger,
  {
    audit: createAuditSink(createWriteStream(join(work, 'audit.log'))),
    agentVerifier: {
      issuer: ISSUER,
      verifier: createAgentVerifier({ issuer: ISSUER, audience: BENCH_POD.spiffeID, jwks: { keys: [jwk] } }),
    },
  },
);
console.log(
  JSON.stringify({ gatePort: sidecar.gatePorts[0], proxyPort: Number(new URL(sidecar.proxyUrl).port), token }),
);
