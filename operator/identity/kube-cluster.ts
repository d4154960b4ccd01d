/** IdentityCluster on the Kubernetes API: TokenReview, pod and AgentEntitlement reads. */
import { API_VERSION, AGENT_ENTITLEMENT } from '../../lib/api/constants.ts';
import type { AgentEntitlement } from '../../lib/api/types.generated.ts';
import type { IdentityCluster, PodIdentity, TokenReviewStatus } from './exchange.ts';

export type KubeRequest = (
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
) => Promise<{ status: number; body: unknown }>;

export function kubeIdentityCluster(request: KubeRequest): IdentityCluster {
  const get = async <T>(path: string): Promise<T | undefined> => {
    const res = await request('GET', path);
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw new Error(`GET ${path}: HTTP ${res.status}`);
    return res.body as T;
  };
  return {
    async reviewToken(token, audiences) {
      const res = await request('POST', '/apis/authentication.k8s.io/v1/tokenreviews', {
        apiVersion: 'authentication.k8s.io/v1',
        kind: 'TokenReview',
        spec: { token, audiences },
      });
      if (res.status !== 201 && res.status !== 200) throw new Error(`TokenReview: HTTP ${res.status}`);
      return (res.body as { status?: TokenReviewStatus }).status ?? {};
    },
    getPod: (namespace, name) =>
      get<PodIdentity>(`/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`),
    getEntitlement: (namespace, podName) =>
      get<AgentEntitlement>(
        `/apis/${API_VERSION}/namespaces/${encodeURIComponent(namespace)}/${AGENT_ENTITLEMENT.plural}/${encodeURIComponent(podName)}`,
      ),
  };
}
