/**
 * Finds the control-plane binaries: ready ones from KUBEBUILDER_ASSETS (as setup-envtest provides them),
 * else the cache that hack/build-k8s-binaries.sh fills from the official Go modules (building it if asked).
 */
import { accessSync, constants } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { packageRoot } from '../lib/paths.ts';

export interface Binaries {
  etcd: string;
  kubeApiserver: string;
  kubectl: string;
  /** Absent when only KUBEBUILDER_ASSETS was given and the cache has none: no GC, namespaces never finish deleting. */
  kubeControllerManager?: string;
  helm?: string;
}

export interface BinariesConfig {
  /** KUBEBUILDER_ASSETS: a directory with etcd, kube-apiserver, kubectl (and maybe more). */
  assetsDir?: string;
  /** Where hack/build-k8s-binaries.sh keeps its output (AGENTFENCE_CACHE). */
  cacheDir: string;
  /** Build from Go modules when the cache is empty (slow the first time). */
  build: boolean;
}

// From the package root, not this file: compiled, this module lives in dist/localcluster/.
const BUILD_SCRIPT = join(packageRoot(), 'hack', 'build-k8s-binaries.sh');
const NODE_BUILD_SCRIPT = join(packageRoot(), 'hack', 'build-node-binaries.sh');

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Runs the build script (a no-op when everything is cached) and returns the bin directory it prints. */
async function cachedBinDir(config: BinariesConfig, script = BUILD_SCRIPT): Promise<string> {
  const args = config.build ? [] : ['--check'];
  const what = script === BUILD_SCRIPT ? 'control-plane' : 'node';
  return new Promise((resolve, reject) => {
    const child = spawn(script, args, {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, AGENTFENCE_CACHE: config.cacheDir }, // eslint-disable-line no-restricted-properties -- child inherits the environment
    });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code === 0) resolve(out.trim().split('\n').pop() ?? '');
      else
        reject(
          new Error(
            config.build
              ? `building the ${what} binaries failed (exit ${code ?? 'signal'}); see the output above`
              : `${what} binaries are not built yet: run hack/${script === BUILD_SCRIPT ? 'build-k8s-binaries.sh, or set KUBEBUILDER_ASSETS' : 'build-node-binaries.sh'}`,
          ),
        );
    });
  });
}

export async function resolveBinaries(config: BinariesConfig): Promise<Binaries> {
  const fromAssets = (name: string): string | undefined => {
    if (!config.assetsDir) return undefined;
    const path = join(config.assetsDir, name);
    return executable(path) ? path : undefined;
  };
  const assets = {
    etcd: fromAssets('etcd'),
    kubeApiserver: fromAssets('kube-apiserver'),
    kubectl: fromAssets('kubectl'),
    kubeControllerManager: fromAssets('kube-controller-manager'),
    helm: fromAssets('helm'),
  };
  if (assets.etcd && assets.kubeApiserver && assets.kubectl) {
    // Optional ones may still come from our cache, if it was built; never build just for them.
    let cache: string | undefined;
    try {
      cache = await cachedBinDir({ ...config, build: false });
    } catch {
      cache = undefined;
    }
    const cached = (name: string): string | undefined =>
      cache && executable(join(cache, name)) ? join(cache, name) : undefined;
    const result: Binaries = { etcd: assets.etcd, kubeApiserver: assets.kubeApiserver, kubectl: assets.kubectl };
    const kcm = assets.kubeControllerManager ?? cached('kube-controller-manager');
    const helm = assets.helm ?? cached('helm');
    if (kcm) result.kubeControllerManager = kcm;
    if (helm) result.helm = helm;
    return result;
  }
  if (config.assetsDir) {
    throw new Error(`KUBEBUILDER_ASSETS=${config.assetsDir} must contain executable etcd, kube-apiserver and kubectl`);
  }
  const dir = await cachedBinDir(config);
  return {
    etcd: join(dir, 'etcd'),
    kubeApiserver: join(dir, 'kube-apiserver'),
    kubectl: join(dir, 'kubectl'),
    kubeControllerManager: join(dir, 'kube-controller-manager'),
    helm: join(dir, 'helm'),
  };
}

/** The bin directory of hack/build-node-binaries.sh (kubelet, kube-scheduler, containerd, kube-router, pause). */
export function resolveNodeBinDir(config: BinariesConfig): Promise<string> {
  return cachedBinDir(config, NODE_BUILD_SCRIPT);
}
