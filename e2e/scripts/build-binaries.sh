#!/usr/bin/env bash
# Build the e2e binaries from the Go modules pinned in e2e/versions.env:
# - the control plane: kube-apiserver, kube-controller-manager, kube-scheduler and
#   kubectl as one multi-call `k8s` binary (module e2e/controlplane), etcd
#   (module e2e/etcd), and kwok (`go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION`,
#   kept out of the controlplane module so it cannot raise k8s's dependencies),
#   plus kwok's default Stages (kwok-stages.yaml);
# - helm (`go install helm.sh/helm/v4/cmd/helm@$HELM_VERSION`, with helm's own
#   go.sum), for the chart tests (e2e/tests/helm.rs).
#
#   e2e/scripts/build-binaries.sh               # both; prints the control-plane bin dir on its last stdout line
#   e2e/scripts/build-binaries.sh controlplane  # the control plane only; same output
#   e2e/scripts/build-binaries.sh helm          # helm only; prints helm's bin dir on its last stdout line
#
# Output: ${PETREL_CACHE_DIR:-$HOME/.cache/petrel}/bin/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/
# and .../bin/helm-$HELM_VERSION/helm. Each directory has its own recipe and lock, so
# a helm bump never rebuilds the control plane and the other way round.
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
jobs="${PETREL_GO_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
what="${1:-all}"
case "$what" in
  all | controlplane | helm) ;;
  *) echo "usage: $0 [all|controlplane|helm]" >&2; exit 2 ;;
esac

need_go() {
  command -v go >/dev/null || { echo "build-binaries: go not found (need Go >= 1.21; it fetches the 1.26 toolchain itself)" >&2; exit 1; }
  # The modules say `go 1.26.0`; Go >= 1.21 downloads that toolchain from the
  # module proxy by itself (GOTOOLCHAIN=auto, the default) when it is older.
  local gominor
  gominor="$(GOTOOLCHAIN=local go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
  if [[ -z "$gominor" || "$gominor" -lt 21 ]]; then
    echo "build-binaries: need Go >= 1.21 (>= 1.26 or toolchain download), have $(go version)" >&2; exit 1
  fi
}

# >>> helm (this section is left out of the control plane's recipe)
# Builds helm once into $cache/bin/helm-$HELM_VERSION/ and prints that directory.
build_helm() {
  local name="helm-$HELM_VERSION"
  local dir="$cache/bin/$name"
  local recipe
  recipe="$(cd "$e2e" && { grep '^HELM_VERSION=' versions.env; sed -n '/^# >>> helm/,/^# <<< helm/p' scripts/build-binaries.sh; } \
    | sha256sum | cut -c1-16)"
  helm_complete() { grep -qx "recipe=$recipe" "$dir/.complete" 2>/dev/null && [[ -x "$dir/helm" ]]; }
  if helm_complete; then echo "$dir"; return 0; fi
  mkdir -p "$cache/bin"
  exec 8>"$cache/bin/.$name.lock"
  if command -v flock >/dev/null; then flock 8; fi
  if helm_complete; then exec 8>&-; echo "$dir"; return 0; fi   # another process built it meanwhile
  rm -rf "$cache/bin/.$name.tmp."*
  need_go
  local tmp start=$SECONDS
  tmp="$(mktemp -d "$cache/bin/.$name.tmp.XXXXXX")"
  chmod 755 "$tmp"
  echo "build-binaries: building $name into $dir (go install -p $jobs)" >&2
  # `go install pkg@version` builds with helm's own go.mod and go.sum (checked against
  # sum.golang.org): no module of ours can shift helm's dependencies.
  if ! (cd "$tmp" && CGO_ENABLED=0 GOWORK=off GOBIN="$tmp" go install -p "$jobs" -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
      "helm.sh/helm/v4/cmd/helm@$HELM_VERSION") >&2; then
    rm -rf "$tmp"
    echo "build-binaries: building helm $HELM_VERSION failed" >&2
    exit 1
  fi
  "$tmp/helm" version >&2
  printf 'recipe=%s\nbuilt in %ss on %s\n' "$recipe" "$((SECONDS - start))" "$(date -u +%FT%TZ)" > "$tmp/.complete"
  rm -rf "$dir"
  mv -T "$tmp" "$dir"
  exec 8>&-
  echo "build-binaries: helm done in $((SECONDS - start))s" >&2
  echo "$dir"
}
# <<< helm

case "$what" in
  helm) build_helm; exit 0 ;;
  all) build_helm >/dev/null ;;
esac

name="k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
bin="$cache/bin/$name"
tools=(k8s kube-apiserver kube-controller-manager kube-scheduler kubectl kwok etcd)

# Everything the build depends on besides the module proxy: a change to any of
# these (not only to versions.env) rebuilds the directory.
# helm's pin and build section are left out: they have their own recipe (build_helm).
recipe="$(cd "$e2e" && { grep -v '^HELM_VERSION=' versions.env; sed '/^# >>> helm/,/^# <<< helm/d' scripts/build-binaries.sh
  cat controlplane/go.mod controlplane/go.sum controlplane/main.go etcd/go.mod etcd/go.sum etcd/main.go; } \
  | sha256sum | cut -c1-16)"

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

need_go

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
