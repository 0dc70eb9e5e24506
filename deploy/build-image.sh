#!/usr/bin/env bash
# Builds the `procmesh` image FROM scratch: links the binary statically (glibc, +crt-static),
# assembles a build context with only what the image holds, and runs `docker build`.
#   deploy/build-image.sh [TAG]          (default tag: procmesh:latest)
# PROCMESH_STATIC_BIN=path skips the cargo build and uses that (already static) binary.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-procmesh:latest}"
target=x86_64-unknown-linux-gnu
bin="${PROCMESH_STATIC_BIN:-}"
if [ -z "$bin" ]; then
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --release --target "$target" -p procmesh
  bin="${CARGO_TARGET_DIR:-target}/$target/release/procmesh"
fi
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "error: $bin is dynamically linked; the image needs a static binary" >&2
  exit 1
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/procmesh"
# Symbols and line tables stay with the build (for backtraces of that build): not in the image.
if command -v strip >/dev/null; then strip "$ctx/procmesh"; fi
mkdir "$ctx/empty" "$ctx/tmp"
chmod 1777 "$ctx/tmp"
cat > "$ctx/passwd" <<'PASSWD'
root:x:0:0:root:/:/procmesh
procmesh:x:65532:65532:procmesh:/var/lib/procmesh:/procmesh
nobody:x:65534:65534:nobody:/:/procmesh
PASSWD
cat > "$ctx/group" <<'GROUP'
root:x:0:
procmesh:x:65532:
nobody:x:65534:
GROUP
docker build --quiet -f deploy/Dockerfile -t "$tag" "$ctx" >/dev/null
size=$(docker image inspect "$tag" --format '{{.Size}}')
echo "built $tag: $size bytes"
