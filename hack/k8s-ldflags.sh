# Sourced by the build scripts: the version ldflags of a Kubernetes binary built from the k8s.io/kubernetes module
# (what the release build sets from git), so `--version` and client-go's user agent report $K8S_VERSION.
k8s_ldflags() {
  local minor
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  echo "-s -w -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
    -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitTreeState=clean \
    -X k8s.io/component-base/version.gitCommit=0000000000000000000000000000000000000000 \
    -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z \
    -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor \
    -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitTreeState=clean"
}
