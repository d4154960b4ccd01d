/** The `agentfence` verbs: the controller is `controller`, with `operator` kept as an alias for older manifests. */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../cli/main.ts';

function captureStdout(): { text: () => string } {
  let out = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out += String(chunk);
    return true;
  });
  return { text: () => out };
}

afterEach(() => vi.restoreAllMocks());

describe('agentfence verbs', () => {
  it('runs the controller as `controller`, and as `operator` (alias) with the same help', async () => {
    const first = captureStdout();
    expect(await main(['controller', '--help'])).toBe(0);
    const controllerHelp = first.text();
    vi.restoreAllMocks();
    const second = captureStdout();
    expect(await main(['operator', '--help'])).toBe(0);
    expect(controllerHelp).toMatch(/^Usage: agentfence controller \[flags\]/);
    expect(controllerHelp).toMatch(/alias.*agentfence operator/);
    expect(second.text()).toBe(controllerHelp);
  });
  it('lists `controller` in the usage, names the alias, and does not list `operator` as a verb of its own', async () => {
    const out = captureStdout();
    expect(await main(['--help'])).toBe(0);
    expect(out.text()).toMatch(/^ {2}controller\s+run the controller.*\(alias: operator\)/m);
    expect(out.text()).not.toMatch(/^ {2}operator\s/m);
  });
});
