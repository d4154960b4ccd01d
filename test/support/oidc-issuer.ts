/**
 * A local OIDC issuer for tests: its own CA, an HTTPS server publishing its JWKS at /.well-known/jwks.json, and
 * a signer for user tokens (RS256) with whatever claims a test needs, plus the means to forge (another key, the
 * same kid) — what a real identity provider looks like to the sidecar's gate.
 */
import { createServer, type Server } from 'node:https';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK, type JWTPayload } from 'jose';
import { createCertificateAuthority, issueCertificate } from '../../lib/tls/pki.ts';
import { fetchWithCA } from '../../lib/verify/fetch-with-ca.ts';

export interface TestOidcIssuer {
  issuer: string;
  caPem: string;
  /** A fetch that trusts the issuer's CA (what the sidecar is given as userFetch). */
  fetch: typeof fetch;
  /** JWKS requests served so far. */
  jwksRequests(): number;
  sign(claims: JWTPayload, options?: { expiresIn?: string | number; kid?: string; key?: CryptoKey }): Promise<string>;
  /** Publishes a new key (rotation) and returns its kid. */
  rotate(): Promise<string>;
  close(): Promise<void>;
}

export async function startOidcIssuer(): Promise<TestOidcIssuer> {
  const ca = await createCertificateAuthority('agentfence-test-oidc-ca', 1);
  const serving = await issueCertificate(ca, {
    commonName: 'oidc',
    ipAddresses: ['127.0.0.1'],
    usage: 'server',
    validityDays: 1,
  });
  const keys: { kid: string; privateKey: CryptoKey; jwk: JWK }[] = [];
  const addKey = async (kid: string): Promise<string> => {
    const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
    keys.push({ kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' } });
    return kid;
  };
  await addKey('k1');
  let requests = 0;
  const server: Server = createServer({ cert: serving.certPem, key: serving.keyPem }, (req, res) => {
    if (req.url === '/.well-known/jwks.json') {
      requests++;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: keys.map((k) => k.jwk) }));
      return;
    }
    res.statusCode = 404;
    res.end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const issuer = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    issuer,
    caPem: ca.certPem,
    fetch: fetchWithCA(ca.certPem),
    jwksRequests: () => requests,
    async sign(claims, options = {}) {
      const current = keys.at(-1);
      if (!current) throw new Error('no key');
      return new SignJWT(claims)
        .setProtectedHeader({ alg: 'RS256', kid: options.kid ?? current.kid, typ: 'JWT' })
        .setIssuer(typeof claims.iss === 'string' ? claims.iss : issuer)
        .setIssuedAt()
        .setExpirationTime(options.expiresIn ?? '5m')
        .sign(options.key ?? current.privateKey);
    },
    rotate: () => addKey(`k${keys.length + 1}`),
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close').catch(() => undefined);
    },
  };
}
