/** The operator's flags that decide what the token exchange accepts as fenced. */
import { describe, expect, it } from 'vitest';
import { loadOperatorConfig } from '../../cli/operator.ts';

const base = ['--namespace', 'agentfence-system', '--kubeconfig', '/dev/null', '--sidecar-image', 'img:2'];

describe('operator config', () => {
  it('shares one injector configuration between webhook and exchange, plus accepted earlier ones', () => {
    const config = loadOperatorConfig([...base, '--accept-injection', '0.0.9=img:1'], {});
    if (config === 'help') throw new Error('help');
    expect(config.runtime.injector).toMatchObject({ image: 'img:2', controllerUrl: config.runtime.issuerUrl });
    expect(config.runtime.acceptedInjectors).toEqual([
      { ...config.runtime.injector, version: '0.0.9', image: 'img:1' },
    ]);
  });
  it('refuses a malformed --accept-injection with a message naming the flag', () => {
    expect(() => loadOperatorConfig([...base, '--accept-injection', 'img:1'], {})).toThrow(
      /--accept-injection must be VERSION=IMAGE/,
    );
  });
});
