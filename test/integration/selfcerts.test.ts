/**
 * Self-managed serving certificates on the real API server: created once and shared, the webhook's caBundle kept
 * equal to the CA, and a serving certificate close to expiry renewed under the same CA and reloaded.
 */
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientFromKubeconfig, type KubeClient } from '../../lib/kube/client.ts';
import { silentLogger } from '../../lib/log.ts';
import { createCertificateAuthority, issueCertificate } from '../../lib/tls/pki.ts';
import { selfManagedCertificates } from '../../operator/certs/self-managed.ts';
import { mutatingWebhookConfiguration } from '../../webhook/manifests.ts';
import { cluster, createNamespace, eventually, runOrThrow } from '../support/cluster.ts';

let client: KubeClient;
let ns: string;
const webhookName = `agentfence-selfcert-${Date.now().toString(36)}`;

beforeAll(async () => {
  client = await clientFromKubeconfig(cluster().kubeconfigPath);
  ns = await createNamespace('selfcerts');
  const wh = mutatingWebhookConfiguration({
    clientConfig: { url: 'https://127.0.0.1:1/mutate-pods' },
    excludeNamespaces: ['kube-system'],
    namespaceMatchLabels: { 'agentfence-never': 'match' },
  });
  await runOrThrow(['apply', '--server-side', '-f', '-'], JSON.stringify({ ...wh, metadata: { name: webhookName } }));
});

afterAll(async () => {
  await runOrThrow(['delete', 'mutatingwebhookconfiguration', webhookName]);
  client.close();
});

describe('self-managed serving certificates', () => {
  it('creates one Secret that replicas share, for the Service names', async () => {
    const options = {
      client,
      namespace: ns,
      secretName: 'agentfence-serving-cert',
      serviceName: 'agentfence-controller',
      webhookConfigName: webhookName,
      logger: silentLogger,
    };
    const a = await selfManagedCertificates(options);
    const b = await selfManagedCertificates(options);
    expect(b.current().certPem).toBe(a.current().certPem);
    expect(new X509Certificate(a.current().certPem).subjectAltName).toContain(`DNS:agentfence-controller.${ns}.svc`);
    a.stop();
    b.stop();
  });

  it('renews a serving certificate near expiry under the same CA, reloads it, and keeps the webhook caBundle equal to the CA', async () => {
    const ca = await createCertificateAuthority('old-ca', 30);
    const shortLived = await issueCertificate(ca, {
      commonName: 'x',
      dnsNames: ['agentfence-controller.x.svc'],
      usage: 'server',
      validityDays: 20 / 86_400,
    });
    const b64 = (s: string): string => Buffer.from(s).toString('base64');
    await runOrThrow(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Secret',
        type: 'kubernetes.io/tls',
        metadata: { name: 'renew-me', namespace: ns },
        data: {
          'tls.crt': b64(shortLived.certPem),
          'tls.key': b64(shortLived.keyPem),
          'ca.crt': b64(ca.certPem),
          'ca.key': b64(ca.keyPem),
        },
      }),
    );
    const certs = await selfManagedCertificates({
      client,
      namespace: ns,
      secretName: 'renew-me',
      serviceName: 'agentfence-controller',
      webhookConfigName: webhookName,
      logger: silentLogger,
    });
    let reloaded = false;
    certs.onChange(() => (reloaded = true));
    const abort = new AbortController();
    const run = certs.leaderTask().run(abort.signal);
    await eventually(() => (reloaded ? true : undefined), 'renewed certificate reloaded', 20_000);
    const renewed = new X509Certificate(certs.current().certPem);
    expect(renewed.checkIssued(new X509Certificate(ca.certPem))).toBe(true); // same CA
    expect(Date.parse(renewed.validTo)).toBeGreaterThan(Date.now() + 30 * 86_400_000);
    const bundle = await eventually(async () => {
      const wh = JSON.parse(await runOrThrow(['get', 'mutatingwebhookconfiguration', webhookName, '-o', 'json'])) as {
        webhooks: { clientConfig: { caBundle?: string } }[];
      };
      return wh.webhooks[0]?.clientConfig.caBundle;
    }, 'caBundle patched');
    expect(Buffer.from(bundle, 'base64').toString()).toBe(ca.certPem);
    abort.abort();
    await run;
    certs.stop();
  });
});
