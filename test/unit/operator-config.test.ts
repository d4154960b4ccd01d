/** The operator's flags that decide what the token exchange accepts as fenced. */
import { describe, expect, it } from 'vitest';
import { loadOperatorConfig } from '../../cli/operator.ts';
import { DEFAULT_DNS } from '../../operator/compiler/compile.ts';
import { CONTROLLER } from '../../operator/defaults.ts';

const base = ['--namespace', 'agentfence-system', '--kubeconfig', '/dev/null', '--sidecar-image', 'img:2'];

describe('operator config', () => {
  it('shares one injector configuration between webhook and exchange, plus accepted earlier ones', () => {
    const config = loadOperatorConfig([...base, '--accept-injection', '0.0.9=img:1'], {});
    if (config === 'help') throw new Error('help');
    expect(config.controller.runtime.injector).toMatchObject({
      image: 'img:2',
      controllerUrl: config.controller.runtime.issuerUrl,
    });
    expect(config.controller.runtime.acceptedInjectors).toEqual([
      { ...config.controller.runtime.injector, version: '0.0.9', image: 'img:1' },
    ]);
  });
  it('refuses a malformed --accept-injection with a message naming the flag', () => {
    expect(() => loadOperatorConfig([...base, '--accept-injection', 'img:1'], {})).toThrow(
      /--accept-injection must be VERSION=IMAGE/,
    );
  });
});

describe('operator flags → controller config', () => {
  it('parses the flags into the one config startController takes', () => {
    const config = loadOperatorConfig(
      [
        ...base,
        '--listen',
        '0.0.0.0:9443',
        '--network-provider',
        'cilium',
        '--dns-mode',
        'node-local',
        '--dns-ip',
        '169.254.20.10',
        '--trust-domain',
        'example.org',
      ],
      { POD_NAME: 'agentfence-controller-1' },
    );
    if (config === 'help') throw new Error('help');
    expect(config.controller.runtime).toMatchObject({
      namespace: 'agentfence-system',
      podName: 'agentfence-controller-1',
      listen: { host: '0.0.0.0', port: 9443 },
      trustDomain: 'example.org',
      issuerUrl: 'https://agentfence-controller.agentfence-system.svc',
    });
    // What the reconciler compiles with: the provider, node-local DNS as addresses, and the controller's own pods
    // (namespace, labels, the port it listens on) as the endpoint agents may reach.
    expect(config.controller.reconciler).toEqual({
      networkProvider: 'cilium',
      dns: { kind: 'addresses', addresses: ['169.254.20.10'] },
      operator: {
        namespace: 'agentfence-system',
        podLabels: { 'app.kubernetes.io/name': 'agentfence', 'app.kubernetes.io/component': 'controller' },
        port: 9443,
      },
    });
  });
  it('defaults to kube-dns and the kubernetes provider', () => {
    const config = loadOperatorConfig(base, {});
    if (config === 'help') throw new Error('help');
    expect(config.controller.reconciler).toMatchObject({ networkProvider: 'kubernetes', dns: DEFAULT_DNS });
  });
  it('chooses the certificate source: a directory, or a self-managed Secret (default name when neither)', () => {
    const dir = loadOperatorConfig([...base, '--cert-dir', '/certs'], {});
    const secret = loadOperatorConfig(base, {});
    if (dir === 'help' || secret === 'help') throw new Error('help');
    expect(dir.certs).toEqual({ dir: '/certs' });
    expect(secret.certs).toEqual({ secret: CONTROLLER.certSecretName });
  });
});
