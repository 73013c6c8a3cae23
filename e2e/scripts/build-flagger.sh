#!/usr/bin/env bash
# Build Flagger from the Go module proxy for canary-bench (the benchmark only: no test
# and no CI step uses it).
#
#   e2e/scripts/build-flagger.sh    # prints Flagger's bin dir on its last stdout line
#
# Output: ${PETREL_CACHE_DIR:-$HOME/.cache/petrel}/bin/flagger-$FLAGGER_VERSION/ with
# `flagger` (`go install github.com/fluxcd/flagger/cmd/flagger@$FLAGGER_VERSION`, built
# with Flagger's own go.mod and go.sum) and `crd.yaml` (the module's
# artifacts/flagger/crd.yaml, the CRDs Flagger needs). Idempotent, atomic (temp dir +
# rename, `.complete` marker) and serialised by a lock file, like build-binaries.sh.
# Env: PETREL_CACHE_DIR, PETREL_GO_BUILD_JOBS (go build -p, default nproc),
# FLAGGER_VERSION (default below).
set -euo pipefail

version="${FLAGGER_VERSION:-v1.41.0}"
cache="${PETREL_CACHE_DIR:-$HOME/.cache/petrel}"
jobs="${PETREL_GO_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
name="flagger-$version"
dir="$cache/bin/$name"
module=github.com/fluxcd/flagger
recipe="$(sha256sum < "${BASH_SOURCE[0]}" | cut -c1-16)"

complete() {
  grep -qx "recipe=$recipe" "$dir/.complete" 2>/dev/null && [[ -x "$dir/flagger" && -s "$dir/crd.yaml" ]]
}
if complete; then echo "$dir"; exit 0; fi

mkdir -p "$cache/bin"
exec 9>"$cache/bin/.$name.lock"
if command -v flock >/dev/null; then flock 9; fi
if complete; then echo "$dir"; exit 0; fi   # another process built it meanwhile
rm -rf "$cache/bin/.$name.tmp."*
command -v go >/dev/null || { echo "build-flagger: go not found" >&2; exit 1; }

tmp="$(mktemp -d "$cache/bin/.$name.tmp.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "build-flagger: building $module $version into $dir (go install -p $jobs)" >&2
(cd "$tmp" && CGO_ENABLED=0 GOWORK=off GOBIN="$tmp" go install -p "$jobs" -trimpath -ldflags "-s -w" \
  "$module/cmd/flagger@$version") >&2
src="$(cd "$tmp" && GOWORK=off go mod download -json "$module@$version" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -s "$src/artifacts/flagger/crd.yaml" ]] || { echo "build-flagger: no artifacts/flagger/crd.yaml in '$src'" >&2; exit 1; }
cp "$src/artifacts/flagger/crd.yaml" "$tmp/crd.yaml"
chmod 644 "$tmp/crd.yaml"
"$tmp/flagger" -version >&2 || true
printf 'recipe=%s\nbuilt in %ss on %s\n' "$recipe" "$((SECONDS - start))" "$(date -u +%FT%TZ)" > "$tmp/.complete"
rm -rf "$dir"
mv -T "$tmp" "$dir"
trap - EXIT
echo "build-flagger: done in $((SECONDS - start))s" >&2
echo "$dir"
