#!/usr/bin/env bash
# Builds the official etcd, kube-apiserver, kube-controller-manager, kubectl and helm binaries from their Go
# modules (no binary downloads are possible here), at pinned matching versions, into a cache outside the repo.
# Re-running is cheap: a version whose binaries are all present is not rebuilt.
#
# Usage: hack/build-k8s-binaries.sh            # prints the bin directory on stdout when done
#        hack/build-k8s-binaries.sh --check    # prints it only if everything is already built, else exits 3
# Env:   AGENTFENCE_CACHE (default ~/.cache/agentfence), K8S_VERSION, ETCD_VERSION, HELM_VERSION
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.8}   # the etcd that k8s v1.36 pins in its go.mod
HELM_VERSION=${HELM_VERSION:-v3.21.4}  # helm built against k8s 0.36 libraries
CACHE=${AGENTFENCE_CACHE:-$HOME/.cache/agentfence}
BIN="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
WORK="$CACHE/build"
BINARIES=(etcd kube-apiserver kube-controller-manager kubectl helm)

log() { echo "build-k8s-binaries: $*" >&2; }
# shellcheck source=k8s-ldflags.sh
source "$(dirname "${BASH_SOURCE[0]}")/k8s-ldflags.sh"

# helm's ldflags changed after the first builds (its default Kubernetes version): a helm built with other
# ldflags than these is rebuilt, so machines that cached the old one get the new one.
HELM_BUILD_STAMP="$BIN/.helm-ldflags-v2"
all_present() {
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  [[ -f $HELM_BUILD_STAMP ]]
}
if all_present; then echo "$BIN"; exit 0; fi
if [[ ${1:-} == --check ]]; then log "not built yet: $BIN"; exit 3; fi

command -v go >/dev/null || { log "go is required on PATH"; exit 1; }
mkdir -p "$BIN" "$WORK"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
staging="v0.$minor.${K8S_VERSION##*.}"

# --- kubernetes: a wrapper module, because k/k requires its staging modules at v0.0.0 (not on the proxy)
if [[ ! -x "$BIN/kube-apiserver" || ! -x "$BIN/kube-controller-manager" || ! -x "$BIN/kubectl" ]]; then
  dir="$WORK/k8s-$K8S_VERSION"; mkdir -p "$dir"; cd "$dir"
  log "resolving k8s.io/kubernetes@$K8S_VERSION"
  kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  godir=$(sed -n 's/^go \(.*\)$/\1/p' "$kmod" | head -1)
  godebug=$(grep '^godebug ' "$kmod" || true)
  {
    echo "module local/agentfence-k8sbin"
    echo; echo "go $godir"; [[ -n $godebug ]] && echo "$godebug"
    echo; echo "require k8s.io/kubernetes $K8S_VERSION"; echo; echo "replace ("
    grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$kmod" | awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } > go.mod
  ldflags=$(k8s_ldflags)
  for cmd in kube-apiserver kube-controller-manager kubectl; do
    [[ -x "$BIN/$cmd" ]] && continue
    log "building $cmd $K8S_VERSION (slow the first time)"
    go get "k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION" >/dev/null 2>&1 || go get "k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION"
    go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  done
fi

# --- etcd: server/v3 has package main at its root but path replaces, so it also needs a wrapper module
if [[ ! -x "$BIN/etcd" ]]; then
  dir="$WORK/etcd-$ETCD_VERSION"; mkdir -p "$dir"; cd "$dir"
  [[ -f go.mod ]] || go mod init local/agentfence-etcdbin >/dev/null 2>&1
  log "building etcd $ETCD_VERSION"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" 2>/dev/null || go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$BIN/etcd.tmp" "$BIN/etcd"
fi

# --- helm: no replace lines, but build in a wrapper too so the version ldflags can be set. The ldflags are
#     those of helm's own Makefile: its version, and the default Kubernetes version (`helm template` without
#     --kube-version, lint's deprecation checks) derived from the client-go it is built with, as v(1+major).minor.
if [[ ! -x "$BIN/helm" || ! -f $HELM_BUILD_STAMP ]]; then
  dir="$WORK/helm-$HELM_VERSION"; mkdir -p "$dir"; cd "$dir"
  [[ -f go.mod ]] || go mod init local/agentfence-helmbin >/dev/null 2>&1
  log "building helm $HELM_VERSION"
  go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" 2>/dev/null || go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  clientgo=$(go list -m -f '{{.Version}}' k8s.io/client-go)   # v0.36.3 -> Kubernetes 1.36
  kmajor=$(( $(echo "${clientgo#v}" | cut -d. -f1) + 1 ))
  kminor=$(echo "${clientgo#v}" | cut -d. -f2)
  h=helm.sh/helm/v3
  go build -trimpath -ldflags "-s -w -X $h/internal/version.version=$HELM_VERSION -X $h/internal/version.metadata= \
    -X $h/internal/version.gitTreeState=clean \
    -X $h/pkg/lint/rules.k8sVersionMajor=$kmajor -X $h/pkg/lint/rules.k8sVersionMinor=$kminor \
    -X $h/pkg/chartutil.k8sVersionMajor=$kmajor -X $h/pkg/chartutil.k8sVersionMinor=$kminor" \
    -o "$BIN/helm.tmp" $h/cmd/helm
  mv "$BIN/helm.tmp" "$BIN/helm"
  touch "$HELM_BUILD_STAMP"
fi

all_present || { log "some binaries are missing in $BIN"; exit 1; }
echo "$BIN"
