/**
 * The `agentfence` command. Each subcommand is a thin entrypoint: it builds its one typed config object from
 * argv and the environment (the only place either is read), then hands over to the component.
 */
export interface CommandContext {
  argv: string[];
  env: Readonly<Record<string, string | undefined>>;
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

export type Command = (ctx: CommandContext) => Promise<number>;

// Loaded on demand: the sidecar must not pay (in start-up time and memory) for the controller's modules.
const COMMANDS: Record<string, { summary: string; aliases?: string[]; load: () => Promise<Command> }> = {
  controller: {
    summary: 'run the controller: policy reconciler, admission webhook, identity issuer, entitlement distribution',
    // The verb was `operator` before it took the chart's name; manifests that still say so keep working.
    aliases: ['operator'],
    load: async () => (await import('./operator.ts')).operatorCommand,
  },
  sidecar: {
    summary: 'run the egress fence: deny-by-default proxy with identity, audit and metrics',
    load: async () => (await import('./sidecar.ts')).sidecarCommand,
  },
  render: {
    summary: 'compile AgentPolicies against manifests offline; print the AgentEntitlements and NetworkPolicies',
    load: async () => (await import('./render.ts')).renderCommand,
  },
  cleanup: {
    summary:
      'remove what the controller created (NetworkPolicies, entitlements, CA bundles, Secrets, Lease); run on uninstall',
    load: async () => (await import('./cleanup.ts')).cleanupCommand,
  },
  'local-cluster': {
    summary: 'run a real local control plane (etcd, kube-apiserver, kube-controller-manager) with the CRDs installed',
    load: async () => (await import('./local-cluster.ts')).localClusterCommand,
  },
  demo: {
    summary: 'run Agentfence end to end on the local control plane and narrate it (npm run demo)',
    load: async () => (await import('./demo.ts')).demoCommand,
  },
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(
    ([name, c]) => `  ${name.padEnd(16)}${c.summary}${c.aliases ? ` (alias: ${c.aliases.join(', ')})` : ''}`,
  );
  return `Usage: agentfence <command> [flags]\n\nCommands:\n${lines.join('\n')}\n\nRun 'agentfence <command> --help' for its flags.\n`;
}

export async function main(argv: string[]): Promise<number> {
  const ctx: Omit<CommandContext, 'argv'> = {
    env: process.env, // eslint-disable-line no-restricted-properties -- the CLI entrypoint is where the environment is read
    stdout: (t) => process.stdout.write(t),
    stderr: (t) => process.stderr.write(t),
  };
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    ctx.stdout(usage());
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name] ?? Object.values(COMMANDS).find((c) => c.aliases?.includes(name));
  if (!command) {
    ctx.stderr(`agentfence: unknown command '${name}'\n\n${usage()}`);
    return 2;
  }
  try {
    return await (
      await command.load()
    )({ ...ctx, argv: rest });
  } catch (err) {
    ctx.stderr(`agentfence ${name}: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}
