"""LoRA fine-tuning with PEFT on (prompt, response) chat pairs; CPU or GPU.

Contract: :func:`train_lora` writes a PEFT adapter (safetensors) to ``out_dir`` and returns a
:class:`TrainReport` with the final training loss and the held-out loss of the base model and of the
adapter (the adapter must lower it to be useful). A progress bar shows steps and loss. Deterministic
for a seed on CPU.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm


@dataclass(frozen=True)
class TrainReport:
    """Losses measured during and after training."""

    steps: int
    train_loss: float
    heldout_loss_base: float
    heldout_loss_adapter: float


def _batches(texts: list[str], tok: object, seq_len: int, batch: int, rng: random.Random) -> list[dict]:
    order = texts[:]
    rng.shuffle(order)
    out = []
    for i in range(0, len(order), batch):
        enc = tok(
            order[i : i + batch], return_tensors="pt", padding=True, truncation=True, max_length=seq_len
        )  # type: ignore[operator]
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        out.append({**enc, "labels": labels})
    return out


def pick_device() -> str:
    """ "cuda" when torch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _heldout_loss(model: Any, heldout: list[str], tok: Any, seq_len: int, batch: int, device: str) -> float:
    """Mean loss over the held-out texts (fixed batching), in eval mode; the model is left in train mode."""
    import torch

    model.eval()
    with torch.no_grad():
        batches = _batches(heldout, tok, seq_len, batch, random.Random(0))
        losses = [float(model(**_to(b, device)).loss) for b in batches]
    model.train()
    return sum(losses) / len(losses)


def _optimise(
    model: Any,
    train: list[str],
    tok: Any,
    rng: random.Random,
    settings: dict[str, Any],
    on_step: Callable[[int, float], None] | None,
) -> float:
    """AdamW over the trainable (LoRA) parameters for ``settings["steps"]`` steps; the last step's loss."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings["lr"])
    data: list[dict] = []
    bar = tqdm(range(settings["steps"]), desc=settings["desc"], unit="step")
    loss_value = float("nan")
    for step in bar:
        if not data:
            data = _batches(train, tok, settings["seq_len"], settings["batch"], rng)
        loss = model(**_to(data.pop(), settings["device"])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss_value = float(loss.detach())
        bar.set_postfix(loss=f"{loss_value:.3f}")
        if on_step is not None:
            on_step(step + 1, loss_value)
    return loss_value


def train_lora(
    base_dir: Path | str,
    pairs: Sequence[tuple[str, str]],
    out_dir: Path | str,
    rank: int = 8,
    alpha: int = 16,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    steps: int = 30,
    lr: float = 2e-3,
    batch: int = 8,
    seq_len: int = 96,
    seed: int = 0,
    desc: str = "train",
    on_step: Callable[[int, float], None] | None = None,
    on_heldout: Callable[[str, float], None] | None = None,
    device: str = "cpu",
) -> TrainReport:
    """Fine-tune a LoRA on chat ``pairs`` (10% held out) and save it to ``out_dir``; ``on_step(step, loss)``
    after every step, ``on_heldout("base" | "adapter", loss)`` when measured; ``device`` "cuda" trains on
    the GPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if len(pairs) < 10:
        raise ValueError(f"need at least 10 training pairs, got {len(pairs)}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in pairs]
    texts = [str(tok.apply_chat_template(chat, tokenize=False)) for chat in chats]
    rng.shuffle(texts)
    n_eval = max(2, len(texts) // 10)
    heldout, train = texts[:n_eval], texts[n_eval:]
    model: Any = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = model.to(device)
    base_loss = _heldout_loss(model, heldout, tok, seq_len, batch, device)
    if on_heldout is not None:
        on_heldout("base", base_loss)
    cfg = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    peft_model: Any = get_peft_model(model, cfg)
    settings = {"steps": steps, "lr": lr, "batch": batch, "seq_len": seq_len, "desc": desc, "device": device}
    loss_value = _optimise(peft_model, train, tok, rng, settings, on_step)
    adapter_loss = _heldout_loss(peft_model, heldout, tok, seq_len, batch, device)
    if on_heldout is not None:
        on_heldout("adapter", adapter_loss)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    return TrainReport(steps, loss_value, base_loss, adapter_loss)
