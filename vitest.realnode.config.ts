import { defineConfig } from 'vitest/config';

// The real-node suites: a local control plane plus a real node (containerd, kubelet, kube-router) on this
// machine. Root only; elsewhere each suite prints why it is skipped and reports its tests as skipped.
// One node per machine: run the two projects one after the other (npm run test:realnode does).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          // Starts and stops a node of its own and proves the host is left exactly as it was.
          name: 'realnode-teardown',
          include: ['test/realnode/teardown.test.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
        },
      },
      {
        test: {
          name: 'realnode',
          include: ['test/realnode/**/*.test.ts'],
          exclude: ['test/realnode/teardown.test.ts'],
          globalSetup: ['test/realnode/global-setup.ts'],
          fileParallelism: false,
          testTimeout: 120_000,
          hookTimeout: 300_000,
        },
      },
    ],
  },
});
