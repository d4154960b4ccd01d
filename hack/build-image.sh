#!/usr/bin/env bash
# Builds the image the Dockerfile describes, without Docker: Node 24 (the binary plus the glibc libraries it
# links), the compiled app, production node_modules, USER 15001, as an OCI archive; with --import it is
# loaded into the local node's containerd (`ctr -n k8s.io images import`).
#
# Usage: hack/build-image.sh [--import SOCKET CTR] [IMAGE_REF]   # prints the archive path on stdout
#   IMAGE_REF defaults to localhost/agentfence/agentfence:<package.json version>-local
# Env:   AGENTFENCE_CACHE (default ~/.cache/agentfence), NODE_BIN (default: the node on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD
CACHE=${AGENTFENCE_CACHE:-$HOME/.cache/agentfence}
log() { echo "build-image: $*" >&2; }

socket='' ctr=''
if [[ ${1:-} == --import ]]; then socket=$2 ctr=$3; shift 3; fi
version=$(node -p 'require("./package.json").version')
ref=${1:-localhost/agentfence/agentfence:$version-local}
node_bin=$(readlink -f "${NODE_BIN:-$(command -v node)}")
[[ $("$node_bin" --version) == v2[4-9].* ]] || { log "$node_bin is not Node >= 24"; exit 1; }

out="$CACHE/images"; mkdir -p "$out"
archive="$out/$(echo "$ref" | tr '/:' '__').tar"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
root="$work/rootfs"; mkdir -p "$root/app" "$root/usr/local/bin" "$root/tmp"; chmod 1777 "$root/tmp"

# Node and exactly the shared libraries it links (plus the loader), at the same paths.
cp "$node_bin" "$root/usr/local/bin/node"
for lib in $(ldd "$node_bin" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
done

# Production dependencies, installed once per lockfile (the tests rebuild the image often).
lockhash=$(cat package.json package-lock.json | sha256sum | cut -c1-16)
deps="$CACHE/image-deps-$lockhash"
if [[ ! -d $deps/node_modules ]]; then
  log "installing production dependencies"
  rm -rf "$deps.tmp"; mkdir -p "$deps.tmp"; cp package.json package-lock.json "$deps.tmp/"
  (cd "$deps.tmp" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null)
  rm -rf "$deps"; mv "$deps.tmp" "$deps"
fi
cp -r "$deps/node_modules" "$root/app/node_modules"

# The compiled app, as the Dockerfile's build stage makes it.
npx tsc -p tsconfig.build.json --outDir "$root/app/dist" --declaration false --sourceMap false
cp package.json "$root/app/"
cp -r bin crds "$root/app/"
chmod -R a+rX "$root"

"$HERE/hack/oci-image.sh" "$root" "$ref" "$archive" 15001:15001 '["/usr/local/bin/node","/app/bin/agentfence.mjs"]' \
  '["--help"]' '["PATH=/usr/local/bin:/usr/bin:/bin","NODE_ENV=production"]' >/dev/null
if [[ -n $socket ]]; then
  "$ctr" --address "$socket" -n k8s.io images import "$archive" >&2
fi
echo "$archive"
