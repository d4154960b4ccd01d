/**
 * IdentityCluster for the running controller: TokenReview on the API server; pods and AgentEntitlements from
 * the informer caches, with a live GET when the cache has not seen the object yet (a pod that just started).
 * A cache lagging behind a recreated pod refuses (uid mismatch) for the few milliseconds until it catches up:
 * the failure is on the closed side and the sidecar retries.
 */
import { AGENT_ENTITLEMENT, API_VERSION } from '../../lib/api/constants.ts';
import type { AgentEntitlement } from '../../lib/api/types.generated.ts';
import { isNotFound, type KubeClient, type KubeObject } from '../../lib/kube/client.ts';
import type { Informer } from '../../lib/kube/informer.ts';
import type { IdentityCluster, PodIdentity, TokenReviewStatus } from './exchange.ts';

export function cachedIdentityCluster(
  client: KubeClient,
  pods: Informer<KubeObject & PodIdentity>,
  entitlements: Informer<KubeObject & AgentEntitlement>,
): IdentityCluster {
  const live = async <T>(path: string): Promise<T | undefined> => {
    try {
      return await client.get<T>(path);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  };
  const ns = (namespace: string): string => encodeURIComponent(namespace);
  return {
    async reviewToken(token, audiences) {
      const review = await client.request<{ status?: TokenReviewStatus }>(
        'POST',
        '/apis/authentication.k8s.io/v1/tokenreviews',
        {
          body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences } },
        },
      );
      return review.status ?? {};
    },
    async getPod(namespace, name) {
      const cached = pods.get(`${namespace}/${name}`);
      if (cached) return cached;
      return live<PodIdentity>(`/api/v1/namespaces/${ns(namespace)}/pods/${encodeURIComponent(name)}`);
    },
    async getEntitlement(namespace, podName) {
      const cached = entitlements.get(`${namespace}/${podName}`);
      if (cached) return cached;
      return live<AgentEntitlement>(
        `/apis/${API_VERSION}/namespaces/${ns(namespace)}/${AGENT_ENTITLEMENT.plural}/${encodeURIComponent(podName)}`,
      );
    },
  };
}
