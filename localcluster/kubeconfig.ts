import { stringify } from 'yaml';

export interface KubeconfigInput {
  server: string;
  caPem: string;
  /** Client certificate identity... */
  certPem?: string;
  keyPem?: string;
  /** ...or a bearer token (a service account's, for least-privilege tests). */
  token?: string;
  name?: string;
}

/** A self-contained kubeconfig (everything embedded), readable by kubectl, helm and client-node. */
export function renderKubeconfig(input: KubeconfigInput): string {
  const name = input.name ?? 'agentfence-local';
  const b64 = (s: string): string => Buffer.from(s).toString('base64');
  const user: Record<string, string> = {};
  if (input.certPem && input.keyPem) {
    user['client-certificate-data'] = b64(input.certPem);
    user['client-key-data'] = b64(input.keyPem);
  }
  if (input.token) user.token = input.token;
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name, cluster: { server: input.server, 'certificate-authority-data': b64(input.caPem) } }],
    users: [{ name, user }],
    contexts: [{ name, context: { cluster: name, user: name } }],
    'current-context': name,
  });
}
