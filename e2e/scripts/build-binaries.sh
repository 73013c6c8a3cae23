#!/usr/bin/env bash
# Build the e2e control-plane binaries from the Go modules pinned in
# e2e/versions.env: kube-apiserver, kube-controller-manager, kube-scheduler and
# kubectl as one multi-call `k8s` binary (module e2e/controlplane), etcd
# (module e2e/etcd), and kwok (`go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION`,
# kept out of the controlplane module so it cannot raise k8s's dependencies),
# plus kwok's default Stages (kwok-stages.yaml).
#
#   e2e/scripts/build-binaries.sh         # prints the bin dir on its last stdout line
#
# Output: ${PETREL_CACHE_DIR:-$HOME/.cache/petrel}/bin/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/
# Idempotent: a complete directory is reused as is (no Go invoked). Atomic: the
# build goes to a temporary sibling directory that is renamed into place only
# after every binary is built, so an interrupted build is never taken for a
# complete one. Concurrent invocations serialise on a lock file.
# Needs: Go (>= 1.26, or >= 1.21 which downloads 1.26) and the Go module proxy; no cgo, no Docker.
# Env: PETREL_CACHE_DIR, PETREL_GO_BUILD_JOBS (go build -p, default nproc).
set -euo pipefail

e2e="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../versions.env
source "$e2e/versions.env"

cache="${PETREL_CACHE_DIR:-$HOME/.cache/petrel}"
name="k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
bin="$cache/bin/$name"
tools=(k8s kube-apiserver kube-controller-manager kube-scheduler kubectl kwok etcd)

# Everything the build depends on besides the module proxy: a change to any of
# these (not only to versions.env) rebuilds the directory.
recipe="$(cd "$e2e" && cat versions.env scripts/build-binaries.sh controlplane/go.mod controlplane/go.sum \
  controlplane/main.go etcd/go.mod etcd/go.sum etcd/main.go | sha256sum | cut -c1-16)"

is_complete() {
  grep -qx "recipe=$recipe" "$bin/.complete" 2>/dev/null || return 1
  local t
  for t in "${tools[@]}"; do [[ -x "$bin/$t" ]] || return 1; done
  [[ -s "$bin/kwok-stages.yaml" ]]
}

if is_complete; then echo "$bin"; exit 0; fi

mkdir -p "$cache/bin"
exec 9>"$cache/bin/.$name.lock"
if command -v flock >/dev/null; then flock 9; fi
if is_complete; then echo "$bin"; exit 0; fi   # another process built it meanwhile
# Leftovers of interrupted builds (we hold the lock, so nobody is using them).
rm -rf "$cache/bin/.$name.tmp."*

command -v go >/dev/null || { echo "build-binaries: go not found (need Go >= 1.21; it fetches the 1.26 toolchain itself)" >&2; exit 1; }
# The modules say `go 1.26.0`; Go >= 1.21 downloads that toolchain from the
# module proxy by itself (GOTOOLCHAIN=auto, the default) when it is older.
gominor="$(GOTOOLCHAIN=local go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
if [[ -z "$gominor" || "$gominor" -lt 21 ]]; then
  echo "build-binaries: need Go >= 1.21 (>= 1.26 or toolchain download), have $(go version)" >&2; exit 1
fi

# The go.mod files are generated (controlplane/gen-replaces.sh, etcd/gen-gomod.sh)
# and committed with their go.sum; refuse to build if they disagree with versions.env.
grep -q "^	k8s.io/kubernetes $KUBERNETES_VERSION\$" "$e2e/controlplane/go.mod" \
  && grep -q "k8s.io/api => k8s.io/api v0${KUBERNETES_VERSION#v1}\$" "$e2e/controlplane/go.mod" \
  || { echo "build-binaries: e2e/controlplane/go.mod does not match versions.env; run e2e/controlplane/gen-replaces.sh" >&2; exit 1; }
grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" "$e2e/etcd/go.mod" \
  || { echo "build-binaries: e2e/etcd/go.mod does not match versions.env; run e2e/etcd/gen-gomod.sh" >&2; exit 1; }

tmp="$(mktemp -d "$cache/bin/.$name.tmp.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

jobs="${PETREL_GO_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
kv="$KUBERNETES_VERSION"
major="${kv#v}"; major="${major%%.*}"
minor="${kv#v*.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$kv -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"


start=$SECONDS
echo "build-binaries: building $name into $bin (go build -p $jobs; the first build downloads many modules)" >&2
(cd "$e2e/controlplane" && CGO_ENABLED=0 GOWORK=off go build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$tmp/k8s" .) >&2
(cd "$e2e/etcd" && CGO_ENABLED=0 GOWORK=off go build -p "$jobs" -trimpath -ldflags "-s -w" -o "$tmp/etcd" .) >&2
(cd "$tmp" && CGO_ENABLED=0 GOWORK=off GOBIN="$tmp" go install -p "$jobs" -trimpath -ldflags "-s -w" \
  "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION") >&2
for t in kube-apiserver kube-controller-manager kube-scheduler kubectl; do ln -s k8s "$tmp/$t"; done
# kwok has no built-in stages (kwokctl injects them); ship the same defaults
# kwokctl uses (node-initialize, node-heartbeat, pod-ready/complete/delete)
# from the pinned kwok module, for `kwok --config=<bin>/kwok-stages.yaml`.
kwokdir="$(cd "$tmp" && GOWORK=off go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$kwokdir/kustomize/stage" ]] || { echo "build-binaries: no kwok stages in '$kwokdir'" >&2; exit 1; }
for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
         pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  echo "---"
  cat "$kwokdir/kustomize/stage/$f"
done > "$tmp/kwok-stages.yaml"
"$tmp/kube-apiserver" --version >&2
"$tmp/etcd" --version >&2
"$tmp/kwok" --version >&2
printf 'recipe=%s\nbuilt in %ss on %s\n' "$recipe" "$((SECONDS - start))" "$(date -u +%FT%TZ)" > "$tmp/.complete"

rm -rf "$bin"            # an incomplete leftover of some older layout
mv -T "$tmp" "$bin"
trap - EXIT
echo "build-binaries: done in $((SECONDS - start))s" >&2
echo "$bin"
