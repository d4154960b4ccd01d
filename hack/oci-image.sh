#!/usr/bin/env bash
# Packs a root filesystem directory into a single-layer OCI image archive (the layout `ctr images import`
# reads), without Docker: a reproducible tar of the rootfs, an image config, a manifest and an index.
#
# Usage: hack/oci-image.sh ROOTFS_DIR IMAGE_REF OUT.tar USER ENTRYPOINT_JSON [CMD_JSON] [ENV_JSON]
#   e.g. hack/oci-image.sh /tmp/root localhost/agentfence/pause:1 /tmp/pause.tar 65535:65535 '["/pause"]'
set -euo pipefail
[[ $# -ge 5 ]] || { echo "usage: $0 ROOTFS IMAGE_REF OUT USER ENTRYPOINT_JSON [CMD_JSON] [ENV_JSON]" >&2; exit 2; }
rootfs=$1 ref=$2 out=$3 user=$4 entrypoint=$5 cmd=${6:-[]} env=${7:-'["PATH=/usr/local/bin:/usr/bin:/bin"]'}
[[ -d $rootfs ]] || { echo "oci-image: $rootfs is not a directory" >&2; exit 2; }

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
blobs="$work/layout/blobs/sha256"; mkdir -p "$blobs"
put() { # put FILE → prints "digest size" after storing FILE as a blob
  local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$blobs/$d"; echo "$d $(stat -c %s "$blobs/$d")"
}
# Reproducible layer: sorted names, root ownership, fixed time.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix --pax-option=delete=atime,delete=ctime \
  -C "$rootfs" -cf "$work/layer.tar" .
read -r layer layer_size < <(put "$work/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"User":"%s","Entrypoint":%s,"Cmd":%s,"Env":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$user" "$entrypoint" "$cmd" "$env" "$layer" > "$work/config.json"
read -r config config_size < <(put "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$config" "$config_size" "$layer" "$layer_size" > "$work/manifest.json"
read -r manifest manifest_size < <(put "$work/manifest.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest" "$manifest_size" "$ref" "${ref##*:}" > "$work/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/layout" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out"
