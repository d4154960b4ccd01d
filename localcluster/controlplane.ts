/**
 * A real Kubernetes control plane on 127.0.0.1, envtest-style: etcd, kube-apiserver (RBAC, admission webhooks,
 * service-account token issuing) and kube-controller-manager (garbage collection, namespace deletion, default
 * service accounts, kube-root-ca.crt). Nothing is scheduled and nothing runs: there is no kubelet.
 *
 * Everything lives in one temporary directory that stop() removes; every process is in its own process group.
 */
import { mkdtemp, mkdir, rm, writeFile, access } from 'node:fs/promises';
import { createServer } from 'node:net';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Binaries } from './binaries.ts';
import { ManagedProcess } from './process.ts';
import { renderKubeconfig } from './kubeconfig.ts';
import {
  createCertificateAuthority,
  generateKeyPair,
  issueCertificate,
  privateKeyPem,
  publicKeyPem,
} from '../lib/tls/pki.ts';
import type { Logger } from '../lib/log.ts';
import { sleep } from '../lib/sleep.ts';

export interface ControlPlaneOptions {
  binaries: Binaries;
  logger: Logger;
  /** Also write the admin kubeconfig here (refused if the file exists); removed again by stop(). */
  kubeconfigPath?: string;
  /** Default 60 s. */
  startTimeoutMs?: number;
  /**
   * Prepare for a real node (localcluster/node.ts): the API server reaches kubelets by InternalIP with the
   * admin client certificate and calls webhooks behind Services at their endpoints (there is no Service proxy),
   * and the controller manager also runs node lifecycle (lifts the not-ready taint), node IPAM (assigns
   * spec.podCIDR from clusterCidr), the Deployment/ReplicaSet and EndpointSlice controllers.
   */
  node?: { clusterCidr: string; nodeCidrMaskSize: number };
}

/** The controllers a real node needs on top of the default four (see ControlPlaneOptions.node). */
/** Where Services get their cluster IPs (the API server's serving certificate names the first, 10.0.0.1). */
export const SERVICE_CLUSTER_IP_RANGE = '10.0.0.0/24';
/**
 * The admin client certificate's user. kube-controller-manager runs with these credentials (no per-controller
 * ServiceAccounts), so garbage collection and namespace deletion arrive at admission as this user.
 */
export const LOCAL_ADMIN_USER = 'admin';

export const NODE_CONTROLLERS = [
  'node-lifecycle-controller',
  'node-ipam-controller',
  'deployment-controller',
  'replicaset-controller',
  // The API server reaches webhooks behind Services through their EndpointSlices (no Service proxy here).
  'endpointslice-controller',
];

export interface ControlPlane {
  /** The temporary directory holding PKI, etcd data and logs. */
  readonly dir: string;
  readonly server: string;
  readonly caPem: string;
  readonly admin: { certPem: string; keyPem: string };
  readonly kubeconfigPath: string;
  readonly serviceAccountIssuer: string;
  readonly binaries: Binaries;
  readonly processes: readonly ManagedProcess[];
  /**
   * Stops kube-apiserver, waits `downtimeMs` (default 0), starts it again with the same flags, port and
   * certificates, and resolves once /readyz answers 200: a real API-server restart for fault-injection tests.
   */
  restartApiServer(options?: { downtimeMs?: number; timeoutMs?: number }): Promise<void>;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error('could not allocate a port'));
      });
    });
  });
}

export interface HttpsClientIdentity {
  caPem: string;
  certPem?: string;
  keyPem?: string;
  bearerToken?: string;
}

/** A GET with a verified server certificate; resolves to the status code and body (never rejects on HTTP errors). */
export function httpsGet(
  url: string,
  identity: HttpsClientIdentity,
  timeoutMs = 5_000,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    if (identity.bearerToken) headers.authorization = `Bearer ${identity.bearerToken}`;
    const req = request(
      url,
      { ca: identity.caPem, cert: identity.certPem, key: identity.keyPem, headers, timeout: timeoutMs },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** Polls `probe` until it says yes; fails early, with its log tail, when one of `processes` exits meanwhile. */
export async function waitFor(
  what: string,
  deadline: number,
  processes: readonly ManagedProcess[],
  probe: () => Promise<boolean>,
  pollMs = 100,
): Promise<void> {
  let lastError = '';
  while (Date.now() < deadline) {
    const dead = processes.find((p) => !p.running);
    if (dead) throw new Error(`${dead.name} exited while waiting for ${what}:\n${dead.logTail()}`);
    try {
      if (await probe()) return;
    } catch (err) {
      lastError = err instanceof Error ? err.message : String(err);
    }
    await sleep(pollMs);
  }
  throw new Error(`timed out waiting for ${what}${lastError ? ` (last error: ${lastError})` : ''}`);
}

export async function startControlPlane(options: ControlPlaneOptions): Promise<ControlPlane> {
  const { binaries, logger } = options;
  const deadline = Date.now() + (options.startTimeoutMs ?? 60_000);
  if (options.kubeconfigPath) {
    const exists = await access(options.kubeconfigPath).then(
      () => true,
      () => false,
    );
    if (exists) {
      throw new Error(`kubeconfig ${options.kubeconfigPath} already exists; choose another path or remove it first`);
    }
  }

  const dir = await mkdtemp(join(tmpdir(), 'agentfence-cp-'));
  const processes: ManagedProcess[] = [];
  let userKubeconfigWritten = false;
  const stop = async (): Promise<void> => {
    // Reverse start order: controller manager, API server, then etcd.
    for (const p of [...processes].reverse()) await p.stop();
    await rm(dir, { recursive: true, force: true });
    if (userKubeconfigWritten && options.kubeconfigPath) await rm(options.kubeconfigPath, { force: true });
  };

  try {
    const pki = join(dir, 'pki');
    const logs = join(dir, 'logs');
    await Promise.all([mkdir(pki), mkdir(logs), mkdir(join(dir, 'etcd'))]);

    const [etcdClientPort, etcdPeerPort, apiPort, kcmPort] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);
    const server = `https://127.0.0.1:${apiPort}`;

    // PKI: a serving CA, a client CA with an admin in system:masters, and the service-account signing key.
    const servingCA = await createCertificateAuthority('agentfence-local-serving-ca', 7);
    const clientCA = await createCertificateAuthority('agentfence-local-client-ca', 7);
    const serving = await issueCertificate(servingCA, {
      commonName: 'kube-apiserver',
      dnsNames: ['localhost', 'kubernetes', 'kubernetes.default', 'kubernetes.default.svc'],
      ipAddresses: ['127.0.0.1', '10.0.0.1'],
      usage: 'server',
      validityDays: 7,
    });
    const admin = await issueCertificate(clientCA, {
      commonName: LOCAL_ADMIN_USER,
      organizations: ['system:masters'],
      usage: 'client',
      validityDays: 7,
    });
    const saKeys = await generateKeyPair();
    const files = {
      servingCert: join(pki, 'apiserver.crt'),
      servingKey: join(pki, 'apiserver.key'),
      servingCA: join(pki, 'serving-ca.crt'),
      clientCA: join(pki, 'client-ca.crt'),
      saPub: join(pki, 'sa.pub'),
      saKey: join(pki, 'sa.key'),
      kubeconfig: join(dir, 'admin.kubeconfig'),
      adminCert: join(pki, 'admin.crt'),
      adminKey: join(pki, 'admin.key'),
    };
    await Promise.all([
      writeFile(files.servingCert, serving.certPem + servingCA.certPem),
      writeFile(files.servingKey, serving.keyPem, { mode: 0o600 }),
      writeFile(files.servingCA, servingCA.certPem),
      writeFile(files.clientCA, clientCA.certPem),
      writeFile(files.saPub, await publicKeyPem(saKeys.publicKey)),
      writeFile(files.saKey, await privateKeyPem(saKeys.privateKey), { mode: 0o600 }),
      writeFile(files.adminCert, admin.certPem),
      writeFile(files.adminKey, admin.keyPem, { mode: 0o600 }),
    ]);
    const kubeconfig = renderKubeconfig({
      server,
      caPem: servingCA.certPem,
      certPem: admin.certPem,
      keyPem: admin.keyPem,
    });
    await writeFile(files.kubeconfig, kubeconfig, { mode: 0o600 });

    // etcd
    const etcdUrl = `http://127.0.0.1:${etcdClientPort}`;
    const peerUrl = `http://127.0.0.1:${etcdPeerPort}`;
    processes.push(
      ManagedProcess.start(
        'etcd',
        binaries.etcd,
        [
          '--name=agentfence',
          `--data-dir=${join(dir, 'etcd')}`,
          `--listen-client-urls=${etcdUrl}`,
          `--advertise-client-urls=${etcdUrl}`,
          `--listen-peer-urls=${peerUrl}`,
          `--initial-advertise-peer-urls=${peerUrl}`,
          `--initial-cluster=agentfence=${peerUrl}`,
          '--unsafe-no-fsync=true',
          '--log-level=warn',
        ],
        join(logs, 'etcd.log'),
      ),
    );
    await waitFor('etcd', deadline, processes, async () => {
      const res = await fetch(`${etcdUrl}/health`);
      return res.ok && ((await res.json()) as { health?: string }).health === 'true';
    });
    logger.debug('etcd ready', { url: etcdUrl });

    // kube-apiserver (one definition of its flags: restartApiServer() starts it again the same way)
    const startApiServer = (): ManagedProcess =>
      ManagedProcess.start(
        'kube-apiserver',
        binaries.kubeApiserver,
        [
          `--etcd-servers=${etcdUrl}`,
          '--bind-address=127.0.0.1',
          '--advertise-address=127.0.0.1',
          `--secure-port=${apiPort}`,
          `--cert-dir=${pki}`,
          `--tls-cert-file=${files.servingCert}`,
          `--tls-private-key-file=${files.servingKey}`,
          `--client-ca-file=${files.clientCA}`,
          `--service-account-issuer=${server}`,
          `--service-account-key-file=${files.saPub}`,
          `--service-account-signing-key-file=${files.saKey}`,
          `--api-audiences=${server}`,
          `--service-cluster-ip-range=${SERVICE_CLUSTER_IP_RANGE}`,
          '--authorization-mode=RBAC',
          '--allow-privileged=true',
          '--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy',
          '--endpoint-reconciler-type=none',
          // Without the controller manager nothing creates default service accounts, so pods could not be admitted.
          ...(binaries.kubeControllerManager ? [] : ['--disable-admission-plugins=ServiceAccount']),
          ...(options.node
            ? [
                '--kubelet-preferred-address-types=InternalIP',
                '--enable-aggregator-routing=true',
                `--kubelet-client-certificate=${files.adminCert}`,
                `--kubelet-client-key=${files.adminKey}`,
              ]
            : []),
          '--v=0',
        ],
        join(logs, 'kube-apiserver.log'),
      );
    const apiServerIndex = processes.push(startApiServer()) - 1;
    const adminIdentity = { caPem: servingCA.certPem, certPem: admin.certPem, keyPem: admin.keyPem };
    await waitFor('kube-apiserver /readyz', deadline, processes, async () => {
      return (await httpsGet(`${server}/readyz`, adminIdentity)).status === 200;
    });
    await waitFor('the default namespace', deadline, processes, async () => {
      return (await httpsGet(`${server}/api/v1/namespaces/default`, adminIdentity)).status === 200;
    });
    logger.debug('kube-apiserver ready', { server });

    if (binaries.kubeControllerManager) {
      processes.push(
        ManagedProcess.start(
          'kube-controller-manager',
          binaries.kubeControllerManager,
          [
            `--kubeconfig=${files.kubeconfig}`,
            `--authentication-kubeconfig=${files.kubeconfig}`,
            `--authorization-kubeconfig=${files.kubeconfig}`,
            '--bind-address=127.0.0.1',
            `--secure-port=${kcmPort}`,
            '--leader-elect=false',
            `--controllers=${['garbage-collector-controller', 'namespace-controller', 'serviceaccount-controller', 'root-ca-certificate-publisher-controller', ...(options.node ? NODE_CONTROLLERS : [])].join(',')}`,
            ...(options.node
              ? [
                  '--allocate-node-cidrs=true',
                  `--cluster-cidr=${options.node.clusterCidr}`,
                  `--node-cidr-mask-size=${options.node.nodeCidrMaskSize}`,
                  `--service-cluster-ip-range=${SERVICE_CLUSTER_IP_RANGE}`,
                ]
              : []),
            `--root-ca-file=${files.servingCA}`,
            `--service-account-private-key-file=${files.saKey}`,
            '--use-service-account-credentials=false',
            '--v=0',
          ],
          join(logs, 'kube-controller-manager.log'),
        ),
      );
      // The service-account controller creating default/default proves the controller manager is working.
      await waitFor('kube-controller-manager (default service account)', deadline, processes, async () => {
        return (
          (await httpsGet(`${server}/api/v1/namespaces/default/serviceaccounts/default`, adminIdentity)).status === 200
        );
      });
      logger.debug('kube-controller-manager ready');
    } else {
      logger.warn('kube-controller-manager not available: no garbage collection, namespaces never finish deleting');
    }

    if (options.kubeconfigPath) {
      await writeFile(options.kubeconfigPath, kubeconfig, { mode: 0o600, flag: 'wx' });
      userKubeconfigWritten = true;
    }

    const restartApiServer = async (restart?: { downtimeMs?: number; timeoutMs?: number }): Promise<void> => {
      const old = processes[apiServerIndex];
      if (old) await old.stop();
      if (restart?.downtimeMs) await sleep(restart.downtimeMs);
      const fresh = startApiServer();
      // Replaced in place so stop() stops the new process and waitFor() watches it.
      processes[apiServerIndex] = fresh;
      const restartDeadline = Date.now() + (restart?.timeoutMs ?? 60_000);
      await waitFor('restarted kube-apiserver /readyz', restartDeadline, processes, async () => {
        return (await httpsGet(`${server}/readyz`, adminIdentity)).status === 200;
      });
      logger.debug('kube-apiserver restarted', { server });
    };

    return {
      dir,
      server,
      caPem: servingCA.certPem,
      admin: { certPem: admin.certPem, keyPem: admin.keyPem },
      kubeconfigPath: options.kubeconfigPath ?? files.kubeconfig,
      serviceAccountIssuer: server,
      binaries,
      processes,
      restartApiServer,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
