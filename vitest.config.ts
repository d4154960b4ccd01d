import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          // test/proxy: the sidecar's data path on loopback sockets (no control plane needed).
          include: ['test/unit/**/*.test.ts', 'test/proxy/**/*.test.ts'],
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          // One real control plane (etcd + kube-apiserver + kube-controller-manager) for the whole run;
          // every test file works in namespaces of its own.
          globalSetup: ['test/integration/global-setup.ts'],
          // Files run one at a time: the operator tests run a cluster-wide reconciler that would otherwise
          // rewrite the AgentEntitlements other files create by hand.
          fileParallelism: false,
          testTimeout: 60_000,
          hookTimeout: 120_000,
        },
      },
    ],
  },
});
