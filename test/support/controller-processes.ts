/**
 * Controller replicas in child processes (test/support/controller-process.ts) sharing one serving certificate and
 * issuer URL, and a round-robin TCP front (what a Service does) so a sidecar that reconnects may land on
 * another replica. Every process and socket is stopped by stop().
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { createCertificateAuthority, issueCertificate } from '../../lib/tls/pki.ts';
import { freePort } from '../../localcluster/controlplane.ts';
import { cluster } from './cluster.ts';
import type { ControllerProcessConfig } from './controller-process.ts';

const SCRIPT = fileURLToPath(new URL('./controller-process.ts', import.meta.url));

export interface ControllerReplica {
  name: string;
  port: number;
  child: ChildProcess;
  adminUrl: string;
  /** stderr so far (the replica's logs at the chosen level). */
  logs(): string;
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

export interface ReplicaSet {
  /** The front's URL: the issuer URL every replica signs with and the address sidecars use. */
  url: string;
  caPem: string;
  replicas: ControllerReplica[];
  /** Which replicas new front connections go to (round robin over these). */
  route(names: string[]): void;
  /** Front connections by replica, for assertions. */
  connections: Map<string, number>;
  stop(): Promise<void>;
}

export async function startReplicaSet(options: {
  namespace: string;
  names: string[];
  trustDomains?: Record<string, string>;
  heartbeatMs: number;
  lease: ControllerProcessConfig['lease'];
  logLevel?: string;
}): Promise<ReplicaSet> {
  const ca = await createCertificateAuthority('agentfence-replicas-ca', 1);
  const serving = await issueCertificate(ca, {
    commonName: 'controller',
    ipAddresses: ['127.0.0.1'],
    usage: 'server',
    validityDays: 1,
  });
  const frontPort = await freePort();
  const url = `https://127.0.0.1:${frontPort}`;
  const replicas: ControllerReplica[] = [];
  for (const name of options.names) {
    const port = await freePort();
    const config: ControllerProcessConfig = {
      kubeconfig: cluster().kubeconfigPath,
      namespace: options.namespace,
      podName: name,
      port,
      issuerUrl: url,
      trustDomain: options.trustDomains?.[name] ?? 'cluster.local',
      tls: { certPem: serving.certPem, keyPem: serving.keyPem, caPem: ca.certPem },
      heartbeatMs: options.heartbeatMs,
      lease: options.lease,
      logLevel: options.logLevel ?? 'warn',
    };
    const child = spawn(process.execPath, [SCRIPT, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    let stdout = '';
    child.stdout.setEncoding('utf8');
    const ready = new Promise<string>((resolve, reject) => {
      child.stdout.on('data', (d: string) => {
        stdout += d;
        const m = /ready (\S+)/.exec(stdout);
        if (m?.[1]) resolve(m[1]);
      });
      child.once('exit', (code) => reject(new Error(`controller ${name} exited (${code}) before ready:\n${stderr}`)));
    });
    const adminUrl = await ready;
    replicas.push({
      name,
      port,
      child,
      adminUrl,
      logs: () => stderr,
      pause: () => child.kill('SIGSTOP'),
      resume: () => child.kill('SIGCONT'),
      async stop() {
        if (child.exitCode !== null || child.signalCode !== null) return;
        child.kill('SIGCONT');
        child.kill('SIGTERM');
        const exited = once(child, 'exit');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      },
    });
  }

  let routes = options.names;
  let next = 0;
  const connections = new Map<string, number>();
  const sockets = new Set<Socket>();
  const front: Server = createServer((client) => {
    const name = routes[next++ % routes.length] ?? '';
    const target = replicas.find((r) => r.name === name);
    if (!target) {
      client.destroy();
      return;
    }
    connections.set(name, (connections.get(name) ?? 0) + 1);
    const upstream = connect(target.port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  front.listen(frontPort, '127.0.0.1');
  await once(front, 'listening');

  return {
    url,
    caPem: ca.certPem,
    replicas,
    connections,
    route(names) {
      routes = names;
    },
    async stop() {
      for (const s of sockets) s.destroy();
      front.close();
      await Promise.all(replicas.map((r) => r.stop()));
    },
  };
}
