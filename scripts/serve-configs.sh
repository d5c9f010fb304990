#!/usr/bin/env bash
# Regenerate the Ray Serve config files from the rmn configs with `serve build` (what a test round-trips):
#   deploy/serve-cpu.yaml  <- serving.app:federated_cpu (deploy/rmn-federated-cpu.yaml)
#   deploy/serve-gpu.yaml  <- serving.app:gpu           (deploy/k8s/gpu/rmn.yaml)
# Usage: scripts/serve-configs.sh [OUT_DIR]   (default: deploy/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-deploy}
for pair in "cpu:federated_cpu" "gpu:gpu"; do
  kind=${pair%%:*}; app=${pair#*:}
  .venv/bin/serve build "serving.app:${app}" -o "${out}/serve-${kind}.yaml" >/dev/null 2>&1
  sed -i 's/^- name: app1$/- name: rmn/' "${out}/serve-${kind}.yaml"
done
