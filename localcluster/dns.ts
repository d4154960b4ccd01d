/**
 * The local node's cluster DNS: CoreDNS (built from its Go module by hack/build-node-binaries.sh, with only the
 * plugins in hack/coredns) run the way clusters run it — a Deployment in kube-system whose pods carry
 * `k8s-app: kube-dns` behind the `kube-dns` Service — so the operator's baseline NetworkPolicy (DNS to those
 * pods) applies unchanged. It answers A records for Services under the cluster domain (the kubelet gives pods
 * the search path, so `svc.ns.svc` and `svc` resolve too) and NXDOMAIN for every other name: there is no
 * upstream, no query leaves the machine.
 */
export const CLUSTER_DOMAIN = 'cluster.local';
/** The `kube-dns` Service's address, inside the API server's service range (10.0.0.0/24). */
export const CLUSTER_DNS_IP = '10.0.0.10';
export const DNS_IMAGE = 'localhost/agentfence/coredns:1';
const NAME = 'coredns';
const LABELS = { 'k8s-app': 'kube-dns' };
/** CoreDNS runs as nobody; the pod's own sysctl lets it bind port 53 without a capability. */
export const DNS_UID = 65534;

const COREFILE = `${CLUSTER_DOMAIN}:53 {
    errors
    health :8080
    ready :8181
    kubernetes ${CLUSTER_DOMAIN} {
        pods disabled
    }
}
.:53 {
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
`;

/** The objects of the DNS add-on, applied in this order (one List for `kubectl apply`). */
export function dnsManifests(): object {
  const meta = { name: NAME, namespace: 'kube-system' };
  return {
    apiVersion: 'v1',
    kind: 'List',
    items: [
      { apiVersion: 'v1', kind: 'ServiceAccount', metadata: meta },
      {
        apiVersion: 'rbac.authorization.k8s.io/v1',
        kind: 'ClusterRole',
        metadata: { name: 'agentfence-local:coredns' },
        rules: [
          { apiGroups: [''], resources: ['services', 'namespaces'], verbs: ['list', 'watch'] },
          { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list', 'watch'] },
        ],
      },
      {
        apiVersion: 'rbac.authorization.k8s.io/v1',
        kind: 'ClusterRoleBinding',
        metadata: { name: 'agentfence-local:coredns' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'agentfence-local:coredns' },
        subjects: [{ kind: 'ServiceAccount', ...meta }],
      },
      { apiVersion: 'v1', kind: 'ConfigMap', metadata: meta, data: { Corefile: COREFILE } },
      {
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: 'kube-dns', namespace: 'kube-system', labels: LABELS },
        spec: {
          clusterIP: CLUSTER_DNS_IP,
          selector: LABELS,
          ports: [
            { name: 'dns', port: 53, protocol: 'UDP', targetPort: 53 },
            { name: 'dns-tcp', port: 53, protocol: 'TCP', targetPort: 53 },
          ],
        },
      },
      {
        apiVersion: 'apps/v1',
        kind: 'Deployment',
        metadata: { ...meta, labels: LABELS },
        spec: {
          replicas: 1,
          selector: { matchLabels: LABELS },
          template: {
            metadata: { labels: LABELS },
            spec: {
              serviceAccountName: NAME,
              dnsPolicy: 'Default',
              terminationGracePeriodSeconds: 1,
              securityContext: {
                runAsNonRoot: true,
                runAsUser: DNS_UID,
                runAsGroup: DNS_UID,
                // A "safe" sysctl, namespaced to the pod: port 53 without CAP_NET_BIND_SERVICE.
                sysctls: [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '53' }],
              },
              containers: [
                {
                  name: NAME,
                  image: DNS_IMAGE,
                  imagePullPolicy: 'Never',
                  args: ['-conf', '/etc/coredns/Corefile'],
                  ports: [
                    { name: 'dns', containerPort: 53, protocol: 'UDP' },
                    { name: 'dns-tcp', containerPort: 53, protocol: 'TCP' },
                  ],
                  readinessProbe: { httpGet: { path: '/ready', port: 8181 }, periodSeconds: 1 },
                  livenessProbe: { httpGet: { path: '/health', port: 8080 }, periodSeconds: 10 },
                  resources: { requests: { cpu: '10m', memory: '16Mi' }, limits: { memory: '64Mi' } },
                  securityContext: {
                    allowPrivilegeEscalation: false,
                    readOnlyRootFilesystem: true,
                    capabilities: { drop: ['ALL'] },
                  },
                  volumeMounts: [{ name: 'config', mountPath: '/etc/coredns', readOnly: true }],
                },
              ],
              volumes: [{ name: 'config', configMap: { name: NAME } }],
            },
          },
        },
      },
    ],
  };
}
