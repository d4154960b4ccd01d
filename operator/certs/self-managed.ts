/**
 * Self-managed serving certificates (the chart's default): a CA and a serving certificate for the controller
 * Service, kept in one Secret that every replica reads and reloads. Whoever finds the Secret missing creates it
 * (a 409 means another replica won; its Secret is used). The leader renews the serving certificate when a third
 * of its life remains, keeping the CA, and keeps the MutatingWebhookConfiguration's caBundle equal to the CA.
 */
import {
  createCertificateAuthority,
  issueCertificate,
  loadCertificateAuthority,
  type CertificateAuthority,
} from '../../lib/tls/pki.ts';
import { LABEL_MANAGED_BY, MANAGED_BY } from '../../lib/api/constants.ts';
import type { Logger } from '../../lib/log.ts';
import {
  CONTENT_TYPE,
  isConflict,
  isNotFound,
  resourcePath,
  type KubeClient,
  type KubeObject,
} from '../../lib/kube/client.ts';
import { Informer } from '../../lib/kube/informer.ts';
import { X509Certificate } from 'node:crypto';
import type { ServingCertSource, ServingCertificate } from './serving.ts';
import { sleep } from '../../lib/sleep.ts';
import type { LeaderTask } from '../runtime.ts';
import { RESOURCES, type DataObject } from '../../lib/kube/resources.ts';

const CA_DAYS = 3650;
const LEAF_DAYS = 90;

export interface SelfManagedOptions {
  client: KubeClient;
  namespace: string;
  secretName: string;
  serviceName: string;
  webhookConfigName: string;
  logger: Logger;
}

const b64 = (s: string): string => Buffer.from(s).toString('base64');
const unb64 = (s: string | undefined): string => Buffer.from(s ?? '', 'base64').toString('utf8');

function dnsNames(o: SelfManagedOptions): string[] {
  return [
    o.serviceName,
    `${o.serviceName}.${o.namespace}`,
    `${o.serviceName}.${o.namespace}.svc`,
    `${o.serviceName}.${o.namespace}.svc.cluster.local`,
  ];
}

function fromSecret(secret: DataObject): ServingCertificate | undefined {
  const d = secret.data;
  if (!d?.['tls.crt'] || !d['tls.key'] || !d['ca.crt']) return undefined;
  return { certPem: unb64(d['tls.crt']), keyPem: unb64(d['tls.key']), caPem: unb64(d['ca.crt']) };
}

async function generate(o: SelfManagedOptions, ca?: CertificateAuthority): Promise<Record<string, string>> {
  const authority = ca ?? (await createCertificateAuthority('agentfence-controller-ca', CA_DAYS));
  const leaf = await issueCertificate(authority, {
    commonName: `${o.serviceName}.${o.namespace}.svc`,
    dnsNames: dnsNames(o),
    usage: 'server',
    validityDays: LEAF_DAYS,
  });
  return {
    'tls.crt': b64(leaf.certPem),
    'tls.key': b64(leaf.keyPem),
    'ca.crt': b64(authority.certPem),
    'ca.key': b64(authority.keyPem),
  };
}

/** Loads (or creates) the Secret and keeps the certificate current from its informer. */
export async function selfManagedCertificates(
  o: SelfManagedOptions,
): Promise<ServingCertSource & { leaderTask(): LeaderTask }> {
  const path = resourcePath(RESOURCES.secrets, { namespace: o.namespace, name: o.secretName });
  let secret: DataObject | undefined;
  try {
    secret = await o.client.get<DataObject>(path);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  if (!secret || !fromSecret(secret)) {
    try {
      secret = await o.client.request<DataObject>('POST', resourcePath(RESOURCES.secrets, { namespace: o.namespace }), {
        body: {
          apiVersion: 'v1',
          kind: 'Secret',
          type: 'kubernetes.io/tls',
          metadata: { name: o.secretName, namespace: o.namespace, labels: { [LABEL_MANAGED_BY]: MANAGED_BY } },
          data: await generate(o),
        },
      });
      o.logger.info('serving certificate created', { secret: o.secretName });
    } catch (err) {
      if (!isConflict(err)) throw err;
      secret = await o.client.get<DataObject>(path); // another replica created it first
    }
  }
  let current = fromSecret(secret);
  if (!current) throw new Error(`Secret ${o.namespace}/${o.secretName} lacks tls.crt, tls.key or ca.crt`);
  const listeners = new Set<() => void>();
  const informer = new Informer<DataObject>({
    client: o.client,
    resource: RESOURCES.secrets,
    namespace: o.namespace,
    fieldSelector: `metadata.name=${o.secretName}`,
    name: 'serving-cert',
    logger: o.logger,
  });
  const load = (s: DataObject): void => {
    const next = fromSecret(s);
    if (!next || (next.certPem === current?.certPem && next.caPem === current.caPem)) return;
    current = next;
    o.logger.info('serving certificate reloaded', { secret: o.secretName });
    for (const l of listeners) l();
  };
  informer.on({ add: load, update: (_, s) => load(s) });
  informer.start();

  const renewIfDue = async (): Promise<void> => {
    const s = await o.client.get<DataObject>(path);
    const cert = fromSecret(s);
    if (!cert) return;
    const x = new X509Certificate(cert.certPem);
    const from = Date.parse(x.validFrom);
    const to = Date.parse(x.validTo);
    if (Date.now() < to - (to - from) / 3) return;
    // Keep the CA (the API server and every sidecar already trust it): only the serving certificate changes.
    const ca = await loadCertificateAuthority(cert.caPem, unb64(s.data?.['ca.key']));
    await o.client.request('PATCH', path, {
      contentType: CONTENT_TYPE.mergePatch,
      body: { metadata: { resourceVersion: s.metadata.resourceVersion }, data: await generate(o, ca) },
    });
    o.logger.info('serving certificate renewed', { secret: o.secretName });
  };

  const patchCaBundle = async (): Promise<void> => {
    if (!current) return;
    const wh = await o.client.get<KubeObject & { webhooks?: { name: string; clientConfig?: { caBundle?: string } }[] }>(
      resourcePath(RESOURCES.mutatingWebhookConfigurations, { name: o.webhookConfigName }),
    );
    const bundle = b64(current.caPem);
    const ops = (wh.webhooks ?? []).flatMap((w, i) =>
      w.clientConfig?.caBundle === bundle
        ? []
        : [{ op: 'add', path: `/webhooks/${i}/clientConfig/caBundle`, value: bundle }],
    );
    if (ops.length === 0) return;
    await o.client.request(
      'PATCH',
      resourcePath(RESOURCES.mutatingWebhookConfigurations, { name: o.webhookConfigName }),
      {
        contentType: CONTENT_TYPE.jsonPatch,
        body: ops,
      },
    );
    o.logger.info('webhook caBundle updated', { webhook: o.webhookConfigName });
  };

  return {
    current: () => current as ServingCertificate,
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    stop() {
      void informer.stop();
    },
    leaderTask: () => ({
      name: 'serving-certificates',
      async run(signal) {
        while (!signal.aborted) {
          try {
            await renewIfDue();
            await patchCaBundle();
          } catch (err) {
            if (!isNotFound(err)) o.logger.warn('serving certificate upkeep failed', { err });
          }
          // Abortable: a plain timer raced against the signal stayed armed after stop() and held the process
          // for up to a minute after SIGTERM.
          await sleep(60_000, signal);
        }
      },
    }),
  };
}
