"""Through vLLM (fp32, in-process) a composite gives the same greedy tokens as transformers + PEFT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters.compose import Component, compose_to_dir

pytestmark = pytest.mark.slow


def test_vllm_composite_greedy_tokens_match_transformers(
    make_llm: Callable[..., Any], tiny_model: Path, adapter_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    composite = tmp_path / "composite"
    compose_to_dir([Component(adapter_dirs["alpha"], 1.0), Component(adapter_dirs["gamma"], 0.5)], composite)
    prompt = "retail media plan for coffee"
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    ids = tok(prompt, return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(composite))
    with torch.no_grad():
        hf = peft_model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :].tolist()

    engine = make_llm(dtype="float32", max_loras=1, kv_bytes=128 << 20, max_model_len=256)
    out = engine.generate(
        [prompt],
        SamplingParams(max_tokens=12, temperature=0, ignore_eos=True),
        lora_request=LoRARequest("composite", 1, str(composite)),
        use_tqdm=False,
    )
    got = list(out[0].outputs[0].token_ids)
    assert got[: len(hf)] == hf
