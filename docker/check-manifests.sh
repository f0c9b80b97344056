#!/usr/bin/env bash
# Every Kubernetes manifest under docker/k8s, checked against the Kubernetes API's own schemas
# (kubernetes-validate, strict: unknown fields are errors), not only as YAML. Custom resources
# without a bundled schema (the Prometheus Operator's PodMonitor) are named here and checked
# field by field in tests/docker.rs instead; any other kind without a schema fails.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.37.0
if ! command -v kubernetes-validate >/dev/null \
  || [ "$(kubernetes-validate --version 2>/dev/null)" != "$version" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$version" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "kubernetes-validate==$version"
fi
status=0
while IFS= read -r file; do
  case "$(basename "$file")" in kustomization.yaml) continue ;; esac
  out=$(kubernetes-validate --strict "$file" 2>&1) || status=1
  printf '%s\n' "$out"
  if printf '%s\n' "$out" | grep "Couldn't find schema" | grep -qv "kind PodMonitor "; then
    echo "error: $file has a kind with no schema to check it against" >&2
    status=1
  fi
done < <(find docker/k8s -name '*.yaml' | sort)
# Each kustomization names only files that exist beside it.
while IFS= read -r k; do
  dir=$(dirname "$k")
  for res in $(sed -n 's/^  - \(.*\)$/\1/p' "$k"); do
    [ -f "$dir/$res" ] || { echo "error: $k names $res, which does not exist" >&2; status=1; }
  done
done < <(find docker/k8s -name kustomization.yaml | sort)
exit $status
