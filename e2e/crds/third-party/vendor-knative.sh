#!/usr/bin/env bash
# Regenerates the Knative Serving CRDs here from the Go module of a Knative release.
# Usage: ./vendor-knative.sh [module version] [release]   (defaults: v0.44.0 1.17.0)
set -euo pipefail
version=${1:-v0.44.0}
release=${2:-1.17.0}
here=$(cd "$(dirname "$0")" && pwd)
dir=$(cd "$(mktemp -d)" && go mod download -json "knative.dev/serving@$version" | jq -r .Dir)
for kind in service revision; do
    out="$here/serving.knative.dev_${kind}s.yaml"
    {
        echo "# Knative Serving v$release (Go module knative.dev/serving $version), config/core/300-resources/$kind.yaml,"
        echo "# schema descriptions removed; see README.md here."
        yq -y "(.metadata.labels[\"app.kubernetes.io/version\"] = \"$release\")
            | .spec.versions[].schema.openAPIV3Schema |= walk(if type == \"object\" and has(\"type\") then del(.description) else . end)" \
            "$dir/config/core/300-resources/$kind.yaml"
    } > "$out"
done
