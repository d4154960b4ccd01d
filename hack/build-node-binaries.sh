#!/usr/bin/env bash
# Builds what a real local node needs on top of the control plane (hack/build-k8s-binaries.sh): kubelet and
# kube-scheduler and kube-proxy, containerd v2 with ctr and the runc shim, kube-router (the NetworkPolicy engine),
# CoreDNS with the plugins in hack/coredns (the cluster DNS) and a static pause binary, from their Go modules into a cache outside the repo. Re-running is cheap: a version whose
# binaries are all present is not rebuilt. runc, the CNI plugins, iptables and ipset come from Debian packages
# (installed with apt-get when missing and running as root, checked otherwise); so does conntrack, which the node's
# teardown uses to drop the connection-tracking entries kube-proxy's NAT left.
#
# Usage: hack/build-node-binaries.sh            # prints the bin directory on stdout when done
#        hack/build-node-binaries.sh --check    # prints it only if everything is built and installed, else exits 3
# Env:   AGENTFENCE_CACHE (default ~/.cache/agentfence), K8S_VERSION, CONTAINERD_VERSION, KUBE_ROUTER_VERSION,
#        COREDNS_VERSION
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}    # kubelet 1.36 needs containerd 2.x (Debian's 1.6 does not work)
KUBE_ROUTER_VERSION=${KUBE_ROUTER_VERSION:-v2.1.0}  # the newest the module proxy serves
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
CACHE=${AGENTFENCE_CACHE:-$HOME/.cache/agentfence}
# Every version is in the name (kube-proxy goes with K8S_VERSION): a changed version is a new directory, built
# whole. A cold build of this directory is ~8 min on 2 cores with a warm Go cache from the control plane.
BIN="$CACHE/node-k8s-$K8S_VERSION-containerd-$CONTAINERD_VERSION-kube-router-$KUBE_ROUTER_VERSION-coredns-$COREDNS_VERSION/bin"
WORK="$CACHE/build"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BINARIES=(kubelet kube-scheduler kube-proxy containerd ctr containerd-shim-runc-v2 kube-router coredns pause)
# Debian packages and one file each proves installed.
PACKAGES=(runc containernetworking-plugins iptables ipset conntrack)
PACKAGE_FILES=(/usr/sbin/runc /usr/lib/cni/bridge /usr/sbin/iptables /usr/sbin/ipset /usr/sbin/conntrack)

log() { echo "build-node-binaries: $*" >&2; }
# shellcheck source=k8s-ldflags.sh
source "$(dirname "${BASH_SOURCE[0]}")/k8s-ldflags.sh"

all_built() { for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done; }
packages_present() { for f in "${PACKAGE_FILES[@]}"; do [[ -x $f ]] || return 1; done; }
if all_built && packages_present; then echo "$BIN"; exit 0; fi
if [[ ${1:-} == --check ]]; then log "not built or not installed yet: $BIN, ${PACKAGES[*]}"; exit 3; fi

if ! packages_present; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    log "missing Debian packages (${PACKAGES[*]}): install them as root with apt-get"; exit 1
  fi
  log "installing ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${PACKAGES[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${PACKAGES[@]}"; }
  packages_present || { log "packages installed but files missing: ${PACKAGE_FILES[*]}"; exit 1; }
fi
all_built && { echo "$BIN"; exit 0; }

command -v go >/dev/null || { log "go is required on PATH"; exit 1; }
mkdir -p "$BIN" "$WORK"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

# build_in DIR MODULE@VERSION PACKAGE OUT [go build args...]: a wrapper module per tool, so replace lines
# and version ldflags can be set without a source checkout.
wrapper() {
  local dir=$1 name=$2
  mkdir -p "$dir"; cd "$dir"
  [[ -f go.mod ]] || go mod init "local/agentfence-$name" >/dev/null 2>&1
}

# --- containerd, ctr and the runc v2 shim: static, without the storage drivers that need cgo
if [[ ! -x "$BIN/containerd" || ! -x "$BIN/ctr" || ! -x "$BIN/containerd-shim-runc-v2" ]]; then
  wrapper "$WORK/containerd-$CONTAINERD_VERSION" containerdbin
  pkg=github.com/containerd/containerd/v2
  log "fetching containerd $CONTAINERD_VERSION"
  go get "$pkg@$CONTAINERD_VERSION" >/dev/null 2>&1 || go get "$pkg@$CONTAINERD_VERSION"
  for cmd in containerd ctr containerd-shim-runc-v2; do
    [[ -x "$BIN/$cmd" ]] && continue
    log "building $cmd $CONTAINERD_VERSION"
    go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
      -ldflags "-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Package=$pkg" \
      -o "$BIN/$cmd.tmp" "$pkg/cmd/$cmd"
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  done
fi

# --- kube-router: run later with only its firewall (NetworkPolicy) controller
if [[ ! -x "$BIN/kube-router" ]]; then
  wrapper "$WORK/kube-router-$KUBE_ROUTER_VERSION" kuberouterbin
  pkg=github.com/cloudnativelabs/kube-router/v2
  log "building kube-router $KUBE_ROUTER_VERSION (slow the first time)"
  go get "$pkg/cmd/kube-router@$KUBE_ROUTER_VERSION" >/dev/null 2>&1 || go get "$pkg/cmd/kube-router@$KUBE_ROUTER_VERSION"
  go build -trimpath -ldflags "-s -w -X $pkg/pkg/version.Version=$KUBE_ROUTER_VERSION" \
    -o "$BIN/kube-router.tmp" "$pkg/cmd/kube-router"
  mv "$BIN/kube-router.tmp" "$BIN/kube-router"
fi

# --- coredns: only the plugins the local cluster's DNS uses (hack/coredns/main.go), packed into an image by
# localcluster/node.ts
if [[ ! -x "$BIN/coredns" ]]; then
  wrapper "$WORK/coredns-$COREDNS_VERSION" corednsbin
  cp "$HERE/coredns/main.go" main.go
  log "building coredns $COREDNS_VERSION"
  go get "github.com/coredns/coredns@$COREDNS_VERSION" >/dev/null 2>&1 || go get "github.com/coredns/coredns@$COREDNS_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$BIN/coredns.tmp" .
  mv "$BIN/coredns.tmp" "$BIN/coredns"
fi

# --- pause: the sandbox's PID 1 (source in hack/pause), packed into an image by hack/build-image.sh
if [[ ! -x "$BIN/pause" ]]; then
  wrapper "$WORK/pause" pausebin
  cp "$HERE/pause/main.go" main.go
  log "building pause"
  go build -trimpath -ldflags "-s -w" -o "$BIN/pause.tmp" .
  mv "$BIN/pause.tmp" "$BIN/pause"
fi

# --- kubelet, kube-scheduler and kube-proxy: the same wrapper module as the control plane (k/k requires its staging
# modules at v0.0.0, which the proxy does not serve), so a warm Go cache is shared with kube-apiserver.
if [[ ! -x "$BIN/kubelet" || ! -x "$BIN/kube-scheduler" || ! -x "$BIN/kube-proxy" ]]; then
  dir="$WORK/k8s-$K8S_VERSION"
  # Built last and only after the control plane: both builds edit that module's go.mod.
  if ! "$HERE/build-k8s-binaries.sh" --check >/dev/null 2>&1 || [[ ! -f $dir/go.mod ]]; then
    log "the control-plane binaries are not built yet: run hack/build-k8s-binaries.sh first"; exit 1
  fi
  cd "$dir"
  ldflags=$(k8s_ldflags)
  for cmd in kubelet kube-scheduler kube-proxy; do
    [[ -x "$BIN/$cmd" ]] && continue
    log "building $cmd $K8S_VERSION"
    go get "k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION" >/dev/null 2>&1 || go get "k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION"
    go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  done
fi

all_built || { log "some binaries are missing in $BIN"; exit 1; }
echo "$BIN"
