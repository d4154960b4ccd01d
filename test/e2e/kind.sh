#!/usr/bin/env bash
# End-to-end on a real cluster: kind (Docker) + the Helm chart + two agents and an upstream.
# For machines with Docker, kind, kubectl and helm; not run in CI here (no Docker engine on the CI machines).
#
#   test/e2e/kind.sh            # creates cluster "agentfence-e2e", runs the checks, deletes everything
#   KEEP=1 test/e2e/kind.sh     # keep the cluster for poking around
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-agentfence-e2e}
IMAGE=agentfence:e2e
NS=agents-e2e
for tool in docker kind kubectl helm; do command -v "$tool" >/dev/null || { echo "e2e: $tool is required"; exit 2; }; done

cleanup() {
  if [[ -z ${KEEP:-} ]]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
fail() { echo "e2e: FAIL: $*"; exit 1; }
step() { echo "e2e: $*"; }

step "creating kind cluster $CLUSTER (the isolation check below needs a CNI that enforces NetworkPolicy)"
kind create cluster --name "$CLUSTER" --wait 120s
step "building and loading the image"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "helm install"
helm install agentfence charts/agentfence --namespace agentfence-system --create-namespace \
  --set image.repository=agentfence --set image.tag=e2e --set image.pullPolicy=Never --wait --timeout 5m

step "deploying an upstream and two agents"
kubectl create namespace "$NS"
kubectl -n "$NS" apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: { name: upstream }
spec:
  selector: { matchLabels: { app: upstream } }
  template:
    metadata: { labels: { app: upstream } }
    spec:
      containers:
        - name: netexec
          image: registry.k8s.io/e2e-test-images/agnhost:2.52
          args: [netexec, --http-port=8080]
          ports: [{ containerPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: upstream }
spec:
  selector: { app: upstream }
  ports: [{ port: 8080, targetPort: 8080 }]
---
apiVersion: agentfence.io/v1alpha1
kind: AgentPolicy
metadata: { name: agent-a }
spec:
  agentSelector: { matchLabels: { agentfence.io/agent: agent-a } }
  egress:
    - name: upstream
      to: { services: [{ name: upstream }] }
      ports: [{ port: 8080 }]
      http: [{ methods: [GET], paths: [{ type: PathPrefix, value: /hostname }] }]
---
apiVersion: agentfence.io/v1alpha1
kind: AgentPolicy
metadata: { name: agent-b }
spec:
  agentSelector: { matchLabels: { agentfence.io/agent: agent-b } }
YAML
for agent in agent-a agent-b; do
  kubectl -n "$NS" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $agent
  labels: { agentfence.io/inject: "true", agentfence.io/agent: $agent }
spec:
  containers:
    - name: agent
      image: curlimages/curl:8.10.1
      command: [sleep, infinity]
      securityContext: { runAsUser: 1000, runAsNonRoot: true }
YAML
done
kubectl -n "$NS" wait --for=condition=Ready pod/agent-a pod/agent-b --timeout=180s
kubectl -n "$NS" rollout status deploy/upstream --timeout=120s

step "checking injection"
sidecars=$(kubectl -n "$NS" get pod agent-a -o jsonpath='{.spec.initContainers[*].name}')
[[ $sidecars == *agentfence-sidecar* ]] || fail "agent-a has no sidecar (init containers: $sidecars)"

step "agent-a may GET /hostname on the upstream"
code=$(kubectl -n "$NS" exec agent-a -c agent -- curl -s -o /dev/null -w '%{http_code}' http://upstream.$NS.svc:8080/hostname)
[[ $code == 200 ]] || fail "agent-a allowed call answered $code"

step "agent-a may not POST, agent-b may not call at all (403 from the sidecar)"
code=$(kubectl -n "$NS" exec agent-a -c agent -- curl -s -o /dev/null -w '%{http_code}' -X POST http://upstream.$NS.svc:8080/hostname)
[[ $code == 403 ]] || fail "agent-a POST answered $code"
body=$(kubectl -n "$NS" exec agent-b -c agent -- curl -s http://upstream.$NS.svc:8080/hostname)
[[ $body == *'"error"'* ]] || fail "agent-b got no denial body: $body"

step "bypassing the proxy does not help: NetworkPolicy isolates agent-b from the upstream and from agent-a"
upstream_ip=$(kubectl -n "$NS" get svc upstream -o jsonpath='{.spec.clusterIP}')
if kubectl -n "$NS" exec agent-b -c agent -- curl -s --noproxy '*' -m 5 "http://$upstream_ip:8080/hostname" >/dev/null; then
  fail "agent-b reached the upstream directly"
fi
a_ip=$(kubectl -n "$NS" get pod agent-a -o jsonpath='{.status.podIP}')
if kubectl -n "$NS" exec agent-b -c agent -- curl -s --noproxy '*' -m 5 "http://$a_ip:15020/healthz" >/dev/null; then
  fail "agent-b reached agent-a directly"
fi

step "entitlements and status"
kubectl -n "$NS" get agentpolicies,agententitlements,networkpolicies

step "cleanup"
helm uninstall agentfence --namespace agentfence-system --wait
kubectl get crd agentpolicies.agentfence.io >/dev/null || fail "CRDs must be kept on uninstall"
echo "e2e: PASS"
