import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { SignJWT, importJWK, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKey, publicJwks, type KeySet } from '../../operator/identity/keys.ts';
import { TokenIssuer, type AgentTokenRequest } from '../../operator/identity/issuer.ts';
import {
  createAgentVerifier,
  AgentTokenError,
  type AgentIdentity,
  type AgentTokenErrorCode,
} from '../../lib/verify/index.ts';
import { agentAllowList, agentOf, requireAgent, type AllowedAgent } from '../../lib/verify/express.ts';
import { AGENT_CLAIM } from '../../lib/identity/claims.ts';

const ISSUER = 'https://agentfence-controller.agentfence-system.svc';
const AUD = 'orders-api.commerce';
const request: AgentTokenRequest = {
  namespace: 'support',
  agent: 'support-agent',
  podName: 'support-agent-7f9c',
  podUID: '5e0bd49b-0000-4000-8000-000000000001',
  serviceAccountName: 'support-agent',
  nodeName: 'node-1',
  revision: 'sha256:ab12',
  audience: AUD,
  ttlSeconds: 300,
};

let keys: KeySet;
let issuer: TokenIssuer;
const now = () => Math.floor(Date.now() / 1000);

beforeAll(async () => {
  keys = { current: await generateSigningKey(Date.now() - 1000, 86_400_000), previous: [] };
  issuer = new TokenIssuer({ issuer: ISSUER, trustDomain: 'cluster.local', keys: () => keys });
});

const verifier = () =>
  createAgentVerifier({ issuer: ISSUER, audience: AUD, jwks: publicJwks(keys), trustDomain: 'cluster.local' });

/** Signs arbitrary header/claims with the real current key, to build tokens our issuer would never make. */
async function forge(
  claims: Record<string, unknown>,
  header: Record<string, unknown> = {},
  jwk: JWK = keys.current.privateJwk,
) {
  const base = {
    iss: ISSUER,
    sub: 'spiffe://cluster.local/ns/support/agent/support-agent',
    aud: AUD,
    iat: now(),
    nbf: now(),
    exp: now() + 300,
    jti: 'j1',
    [AGENT_CLAIM]: { ns: 'support', pod: { name: 'p', uid: 'u' }, sa: 'sa', rev: 'r' },
  };
  const merged: Record<string, unknown> = { ...base, ...claims };
  const payload = Object.fromEntries(Object.entries(merged).filter(([, v]) => v !== undefined));
  return new SignJWT(payload)
    .setProtectedHeader({ alg: 'ES256', kid: jwk.kid ?? keys.current.kid, typ: 'JWT', ...header })
    .sign(await importJWK(jwk, 'ES256'));
}

async function refusal(token: string | undefined): Promise<AgentTokenErrorCode> {
  try {
    await verifier().verify(token);
  } catch (err) {
    if (err instanceof AgentTokenError) {
      if (token) expect(err.message).not.toContain(token);
      return err.code;
    }
    throw err;
  }
  throw new Error('token was accepted');
}

describe('agent token issue and verify', () => {
  it('issues a JWT-SVID shaped token that the verifier accepts, with the identity in it', async () => {
    const issued = await issuer.issue(request);
    const [headerB64] = issued.token.split('.');
    expect(JSON.parse(Buffer.from(headerB64 ?? '', 'base64url').toString())).toEqual({
      alg: 'ES256',
      kid: keys.current.kid,
      typ: 'JWT',
    });
    const id = await verifier().verify(issued.token);
    expect(id).toMatchObject({
      sub: 'spiffe://cluster.local/ns/support/agent/support-agent',
      trustDomain: 'cluster.local',
      namespace: 'support',
      agent: 'support-agent',
      pod: { name: 'support-agent-7f9c', uid: request.podUID },
      serviceAccount: 'support-agent',
      node: 'node-1',
      revision: 'sha256:ab12',
      audience: AUD,
      jti: issued.jti,
    });
    expect(id.expiresAt.getTime() - id.issuedAt.getTime()).toBe(300_000);
    expect(issued.jti).not.toBe((await issuer.issue(request)).jti);
  });

  it('caps a token at the expiry of the key that signs it', async () => {
    const shortKey: KeySet = { current: await generateSigningKey(Date.now() - 1000, 61_000), previous: [] };
    const short = new TokenIssuer({ issuer: ISSUER, trustDomain: 'cluster.local', keys: () => shortKey });
    const issued = await short.issue(request);
    expect(issued.expiresAt).toBe(Math.floor(shortKey.current.expiresAt / 1000));
  });

  it('refuses alg none', async () => {
    const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const token = `${enc({ alg: 'none', typ: 'JWT' })}.${enc({ iss: ISSUER, sub: 'spiffe://cluster.local/ns/support/agent/x', aud: AUD, exp: now() + 60 })}.`;
    expect(['algorithm_not_allowed', 'malformed_token']).toContain(await refusal(token));
  });

  it('refuses HS256 signed with the public key (key confusion)', async () => {
    const pub = JSON.stringify(publicJwks(keys).keys[0]);
    const token = await new SignJWT({
      sub: 'spiffe://cluster.local/ns/support/agent/x',
      aud: AUD,
      iss: ISSUER,
      jti: 'j',
      [AGENT_CLAIM]: {},
    })
      .setProtectedHeader({ alg: 'HS256', kid: keys.current.kid, typ: 'JWT' })
      .setIssuedAt()
      .setNotBefore('0s')
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(pub));
    expect(await refusal(token)).toBe('algorithm_not_allowed');
  });

  it('refuses an unknown kid', async () => {
    const other = await generateSigningKey(Date.now(), 86_400_000);
    expect(await refusal(await forge({}, { kid: other.kid }, other.privateJwk))).toBe('unknown_key');
  });

  it('refuses a bad signature', async () => {
    const good = await forge({});
    const [h, , s] = good.split('.');
    const tampered = `${h}.${Buffer.from(JSON.stringify({ sub: 'spiffe://cluster.local/ns/support/agent/admin' })).toString('base64url')}.${s}`;
    expect(await refusal(tampered)).toBe('bad_signature');
  });

  it.each([
    ['missing exp', { exp: undefined }, 'missing_claim'],
    ['missing aud', { aud: undefined }, 'missing_claim'],
    ['missing jti', { jti: undefined }, 'missing_claim'],
    ['missing agent claim', { [AGENT_CLAIM]: undefined }, 'missing_claim'],
    ['multiple aud', { aud: [AUD, 'other'] }, 'wrong_audience'],
    ['another audience', { aud: 'billing-api' }, 'wrong_audience'],
    ['wrong iss', { iss: 'https://evil.example' }, 'wrong_issuer'],
    ['nbf in the future', { nbf: now() + 120 }, 'not_yet_valid'],
    ['expired', { exp: now() - 120, iat: now() - 420, nbf: now() - 420 }, 'expired'],
    ['sub not a SPIFFE agent ID', { sub: 'system:serviceaccount:support:sa' }, 'wrong_subject'],
    ['another trust domain', { sub: 'spiffe://evil.example/ns/support/agent/support-agent' }, 'wrong_subject'],
    [
      'namespace claim disagreeing with sub',
      { [AGENT_CLAIM]: { ns: 'other', pod: { name: 'p', uid: 'u' }, sa: 'sa', rev: 'r' } },
      'wrong_subject',
    ],
    ['issued too long ago', { iat: now() - 3600, nbf: now() - 3600 }, 'expired'],
  ] as const)('refuses %s', async (_, claims, code) => {
    expect(await refusal(await forge(claims as Record<string, unknown>))).toBe(code);
  });

  it('refuses a wrong typ header', async () => {
    expect(await refusal(await forge({}, { typ: 'at+jwt' }))).toBe('wrong_type');
  });

  it('refuses a missing or malformed token', async () => {
    expect(await refusal(undefined)).toBe('missing_token');
    expect(await refusal('not-a-jwt')).toBe('malformed_token');
  });

  it('accepts clock skew within the tolerance (30 s)', async () => {
    await expect(verifier().verify(await forge({ exp: now() - 10 }))).resolves.toMatchObject({
      agent: 'support-agent',
    });
    await expect(verifier().verify(await forge({ nbf: now() + 10 }))).resolves.toMatchObject({
      agent: 'support-agent',
    });
  });
});

describe('remote JWKS and the express middleware', () => {
  let jwksServer: Server;
  let jwksUrl: string;
  let fetches = 0;
  beforeAll(async () => {
    jwksServer = createServer((_, res) => {
      fetches++;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(publicJwks(keys)));
    });
    jwksServer.listen(0, '127.0.0.1');
    await once(jwksServer, 'listening');
    jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/.well-known/jwks.json`;
  });
  afterAll(() => jwksServer.close());

  it('caches the JWKS and refetches on an unknown kid (a rotated-in key)', async () => {
    const remote = createAgentVerifier({ issuer: ISSUER, audience: AUD, jwksUri: jwksUrl, jwksCooldownMs: 0 });
    await remote.verify((await issuer.issue(request)).token);
    await remote.verify((await issuer.issue(request)).token);
    const afterTwo = fetches;
    expect(afterTwo).toBe(1);
    const old = keys;
    keys = { current: await generateSigningKey(Date.now() - 1000, 86_400_000), previous: [old.current] };
    try {
      await expect(remote.verify((await issuer.issue(request)).token)).resolves.toMatchObject({
        agent: 'support-agent',
      });
      expect(fetches).toBe(afterTwo + 1);
    } finally {
      keys = old;
    }
  });

  it('keeps verifying with the last good key set while the JWKS endpoint is down, then says jwks_unavailable', async () => {
    let down = false;
    const flaky = createServer((_, res) => {
      if (down) {
        res.statusCode = 503;
        res.end('unavailable');
        return;
      }
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(publicJwks(keys)));
    });
    flaky.listen(0, '127.0.0.1');
    await once(flaky, 'listening');
    const url = `http://127.0.0.1:${(flaky.address() as AddressInfo).port}/jwks.json`;
    try {
      const options = { issuer: ISSUER, audience: AUD, jwksUri: url, jwksCacheMaxAgeMs: 1, jwksCooldownMs: 0 };
      const graceful = createAgentVerifier({ ...options, jwksGraceMs: 3_600_000 });
      const strict = createAgentVerifier({ ...options, jwksGraceMs: 0 });
      const token = (await issuer.issue(request)).token;
      await graceful.verify(token);
      await strict.verify(token);
      down = true;
      await new Promise((r) => setTimeout(r, 5)); // both cached copies are stale now
      await expect(graceful.verify(token)).resolves.toMatchObject({ agent: 'support-agent' });
      await expect(strict.verify(token)).rejects.toMatchObject({ code: 'jwks_unavailable' });
      // A token signed by a key the last good set does not know: still unknown_key, not a pass.
      const other: KeySet = { current: await generateSigningKey(Date.now() - 1000, 86_400_000), previous: [] };
      const foreign = await new TokenIssuer({ issuer: ISSUER, trustDomain: 'cluster.local', keys: () => other }).issue(
        request,
      );
      await expect(graceful.verify(foreign.token)).rejects.toMatchObject({ code: 'unknown_key' });
      // Connection refused and never fetched: jwks_unavailable, not malformed_token.
      flaky.close();
      await once(flaky, 'close');
      const never = createAgentVerifier({ ...options, jwksUri: url });
      await expect(never.verify(token)).rejects.toMatchObject({ code: 'jwks_unavailable' });
      await expect(graceful.verify(token)).resolves.toMatchObject({ agent: 'support-agent' });
    } finally {
      if (flaky.listening) flaky.close();
    }
  });

  it('hands the handler the verified agent, refuses others with 401/403 and a reason', async () => {
    const app = express();
    const v = createAgentVerifier({ issuer: ISSUER, audience: AUD, jwksUri: jwksUrl });
    app.get(
      '/orders',
      requireAgent(v, { allowAgents: ['spiffe://cluster.local/ns/support/agent/support-agent'] }),
      (_req, res) => {
        res.json({ caller: agentOf(res).sub });
      },
    );
    const server = app.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/orders`;
    try {
      const ok = await fetch(url, { headers: { authorization: `Bearer ${(await issuer.issue(request)).token}` } });
      expect(ok.status).toBe(200);
      expect(await ok.json()).toEqual({ caller: 'spiffe://cluster.local/ns/support/agent/support-agent' });

      const viaHeader = await fetch(url, {
        headers: { 'agentfence-identity': (await issuer.issue(request)).token, authorization: 'Basic dXNlcjpwdw==' },
      });
      expect(viaHeader.status).toBe(200);

      const other = await fetch(url, {
        headers: { authorization: `Bearer ${(await issuer.issue({ ...request, agent: 'research-agent' })).token}` },
      });
      expect(other.status).toBe(403);
      expect(await other.json()).toMatchObject({ reason: 'agent_not_allowed' });

      // The same agent name in another namespace (another tenant) is another agent.
      const elsewhere = await fetch(url, {
        headers: { authorization: `Bearer ${(await issuer.issue({ ...request, namespace: 'tenant-b' })).token}` },
      });
      expect(elsewhere.status).toBe(403);

      const none = await fetch(url);
      expect(none.status).toBe(401);
      expect(none.headers.get('www-authenticate')).toContain('invalid_token');
      expect(await none.json()).toMatchObject({ reason: 'missing_token' });
    } finally {
      server.close();
    }
  });
});

describe('allowAgents: full identities only', () => {
  const identity = (sub: string): AgentIdentity => {
    const [, trustDomain = '', namespace = '', agent = ''] =
      /^spiffe:\/\/([^/]+)\/ns\/([^/]+)\/agent\/([^/]+)$/.exec(sub) ?? [];
    return { sub, trustDomain, namespace, agent } as AgentIdentity;
  };
  it('accepts exactly the listed SPIFFE IDs and {namespace, agent} pairs', () => {
    const allowed = agentAllowList([
      'spiffe://cluster.local/ns/demo/agent/support-agent',
      { namespace: 'ops', agent: 'pager' },
      { namespace: 'ops', agent: 'auditor', trustDomain: 'prod.example' },
    ]);
    expect(allowed(identity('spiffe://cluster.local/ns/demo/agent/support-agent'))).toBe(true);
    expect(allowed(identity('spiffe://cluster.local/ns/tenant-b/agent/support-agent'))).toBe(false);
    expect(allowed(identity('spiffe://other.example/ns/demo/agent/support-agent'))).toBe(false);
    expect(allowed(identity('spiffe://cluster.local/ns/ops/agent/pager'))).toBe(true);
    expect(allowed(identity('spiffe://cluster.local/ns/demo/agent/pager'))).toBe(false);
    expect(allowed(identity('spiffe://prod.example/ns/ops/agent/auditor'))).toBe(true);
    expect(allowed(identity('spiffe://cluster.local/ns/ops/agent/auditor'))).toBe(false);
  });
  it.each([
    ['a bare agent name', ['support-agent'], /not an agent SPIFFE ID/],
    ['a SPIFFE ID without the agent path', ['spiffe://cluster.local/ns/demo/sa/x'], /not an agent SPIFFE ID/],
    ['a wildcard', ['spiffe://cluster.local/ns/*/agent/support-agent'], /not an agent SPIFFE ID/],
    ['a pair with an empty namespace', [{ namespace: '', agent: 'x' }], /DNS labels/],
    ['nothing', [], /empty/],
  ] as [string, AllowedAgent[], RegExp][])('refuses %s when the list is built', (_, entries, message) => {
    expect(() => agentAllowList(entries)).toThrow(message);
    expect(() => requireAgent({ verify: () => Promise.reject(new Error('unused')) }, { allowAgents: entries })).toThrow(
      message,
    );
  });
});
