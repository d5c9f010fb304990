"""vLLM's CPU punica wrapper with the grouped path: a subclass, selected the way vLLM selects wrappers.

vLLM asks the platform for its wrapper's qualified name (``CpuPlatform.get_punica_wrapper``) when it builds a
model's LoRA manager; :func:`select` makes the CPU platform name :class:`GroupedPunicaWrapperCPU` (one class
swap, CPU only: CUDA keeps vLLM's Triton wrapper). The subclass overrides three hooks and owns its state:
``update_metadata`` (regroup the batch once per step, note which adapter each slot holds), ``add_lora_linear``
and ``add_lora_logits`` (which adds nothing, as vLLM's would add exact zeros, when no slot of the batch holds
lm_head weights). The process-wide mode (``RMN_CPU_LORA``, :func:`serving.engines.cpu_lora.set_mode`)
is read per call, so tests and benchmarks compare paths on one engine (``grouped``, ``exact``, ``fused``,
``compact``: see :mod:`.grouped`); ``vllm`` runs vLLM's own methods, and so does every layer whose shape the
grouped arithmetic does not serve (:meth:`GroupedLoRA.serves`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from serving.engines.cpu_lora.arithmetic import slot_groups
from serving.engines.cpu_lora.grouped import GroupedLoRA, Mode

QUALNAME = f"{__name__}.GroupedPunicaWrapperCPU"
_PROBE_TOKENS = 512  # the probe's largest token count (the engine's batch limit when lower)


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """``PunicaWrapperCPU`` whose linear and logits LoRA run through a :class:`GroupedLoRA`."""

    mode: Mode | Literal["vllm"] = "grouped"  # class-wide: set by serving.engines.cpu_lora.set_mode
    bypass = True  # class-wide: layers no slot of the batch touches run their base layer alone
    active_slots: frozenset[int] | None = None  # the batch's slots with an adapter (None: no bypass)

    def __init__(self, max_num_batched_tokens: int, max_batches: int, device: Any, **kwargs: Any) -> None:
        super().__init__(max_num_batched_tokens, max_batches, device, **kwargs)
        self.grouped = GroupedLoRA(max_tokens=min(max_num_batched_tokens, _PROBE_TOKENS))
        self._groups: list[tuple[int, Any]] | None = None
        self._batch = 0  # changes with every update_metadata: the layers' plans are kept per batch
        self.idle_batches = 0  # batches without any adapter (a batch: one mapping, one or more steps)
        # id(lm_head's lora_a_stacked) -> the slots holding weights there (kept by _tracking: vLLM's
        # add_lora_logits gets the buffers, not the layer)
        self.held_slots: dict[int, set[int]] = {}
        self.bypassed_calls = 0  # layer calls that ran the base layer alone
        self.bypassed_logits = 0  # lm_head LoRA calls that added nothing (no slot of the batch holds weights)
        self.skipped_resets = 0  # vLLM resets of a layer's slot that held no weights (all zeros: skipped)

    def update_metadata(
        self, mapping: Any, lora_index_to_id: list[int | None], *args: Any, **kwargs: Any
    ) -> None:
        super().update_metadata(mapping, lora_index_to_id, *args, **kwargs)
        self._groups = None  # the batch changed: regroup on first use
        self._batch += 1
        self.grouped.weights.set_slots(lora_index_to_id)
        if not type(self).bypass:
            self.active_slots = None
            return
        ids = set(mapping.index_mapping)
        ids.update(mapping.prompt_mapping)
        ids.discard(0)  # LoRA ids are >= 1; 0: no adapter
        self.active_slots = frozenset(i for i, lora_id in enumerate(lora_index_to_id) if lora_id in ids)
        self.idle_batches += not self.active_slots

    def probe_layers(self, layers: Any) -> None:
        """Probe now every linear LoRA layer's shape (they are otherwise probed on first use, which would
        delay the first requests by seconds); lm_head's is probed on first use by an adapter with lm_head
        weights (none of the usual ones: :meth:`add_lora_logits` skips it otherwise)."""
        if type(self).mode not in ("grouped", "exact", "compact"):
            return
        self._grouping()  # the process-wide mode, now (it is otherwise taken up on the next LoRA call)
        for layer in layers:
            lora_a, slices = getattr(layer, "lora_a_stacked", None), getattr(layer, "output_slices", None)
            if isinstance(lora_a, tuple) and slices and getattr(layer, "punica_wrapper", None) is self:
                self.grouped.serves(lora_a, tuple(slices), self.grouped.max_tokens)

    def _grouping(self) -> GroupedLoRA | None:
        mode = type(self).mode
        if mode == "vllm":
            return None
        self.grouped.mode = mode  # grouped | exact | fused | compact: checked by cpu_lora.set_mode
        return self.grouped

    def add_lora_linear(
        self,
        y: Any,
        x: Any,
        lora_a_stacked: tuple[Any, ...],
        lora_b_stacked: tuple[Any, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: Any = None,
        **kwargs: Any,
    ) -> None:
        grouped = self._grouping()
        indices = self.token_lora_indices
        if grouped is not None and x.reshape(-1, x.shape[-1]).shape[0] == indices.shape[0]:  # not padded
            if self._groups is None:
                self._groups = slot_groups(indices)
            args = (y, x, indices, lora_a_stacked, lora_b_stacked, scale, output_slices)
            if grouped.linear(*args, groups=self._groups, batch=self._batch):
                return
        super().add_lora_linear(
            y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs
        )

    def add_lora_logits(
        self,
        y: Any,
        x: Any,
        lora_a_stacked: Any,
        lora_b_stacked: Any,
        scale: float,
        *,
        buffer: Any = None,
        **kwargs: Any,
    ) -> None:
        # vLLM's version gathers a [vocab x r] matrix per sequence; here: the same grouping, per sequence
        if _adds_nothing(self.active_slots, self.held_slots.get(id(lora_a_stacked))):
            self.bypassed_logits += 1  # no slot of the batch has lm_head weights (most adapters): adds zero
            return
        grouped = self._grouping()
        indices = self.sampler_indices
        y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        if grouped is not None and x2.shape[0] == indices.shape[0]:
            size = min(y2.shape[-1], lora_b_stacked.shape[-2])
            limit = min(self._seq_lengths.shape[0], _PROBE_TOKENS)  # one row per sequence (max_batches)
            weights = ((lora_a_stacked,), (lora_b_stacked[..., :size, :],))
            if grouped.linear(y2, x2, indices, *weights, scale, (size,), limit=limit, batch=self._batch):
                return
        super().add_lora_logits(y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer, **kwargs)


def select() -> None:
    """Make vLLM's CPU platform choose :class:`GroupedPunicaWrapperCPU` for the LoRA managers it builds from
    now on, and let LoRA layers no slot of the batch holds weights in skip their LoRA work (idempotent)."""
    from vllm.platforms.cpu import CpuPlatform

    CpuPlatform.get_punica_wrapper = classmethod(lambda cls: QUALNAME)  # type: ignore[method-assign,assignment]
    bypass_idle_layers()


def _adds_nothing(active: frozenset[int] | None, held: set[int] | None) -> bool:
    """Whether a LoRA layer adds exactly zero to this batch: the wrapper tracks the batch's slots (``active``
    not None) and none of them holds weights in the layer (``held``; unknown: only a batch without adapters)."""
    return active is not None and (not active or (held is not None and active.isdisjoint(held)))


def _bypassing(forward: Any) -> Any:
    """``forward`` of a LoRA layer that runs its base layer alone when no slot of the batch has weights in it
    (the layer's ``rmn_slots``, kept by :func:`_tracking`; unknown: only a batch without adapters)."""

    @functools.wraps(forward)
    def bypass(self: Any, *args: Any, **kwargs: Any) -> Any:
        d = self.__dict__
        wrapper = d.get("punica_wrapper")
        if _adds_nothing(getattr(wrapper, "active_slots", None), d.get("rmn_slots")):
            wrapper.bypassed_calls += 1
            return d["_modules"]["base_layer"].forward(*args, **kwargs)
        return forward(self, *args, **kwargs)

    bypass.rmn_bypass = True  # type: ignore[attr-defined]
    return bypass


def _tracking(method: Any, holds: bool, by_buffer: bool = False) -> Any:
    """``set_lora`` (``holds``) or ``reset_lora`` of a LoRA layer that also notes which slots hold weights in
    it: vLLM resets a layer's slot when the adapter put there has no weights for that layer. ``by_buffer``
    (lm_head): the set is also kept on its grouped wrapper, by buffer (``held_slots``)."""

    @functools.wraps(method)
    def track(self: Any, index: int, *args: Any, **kwargs: Any) -> Any:
        slots = self.__dict__.setdefault("rmn_slots", set())
        wrapper = self.__dict__.get("punica_wrapper")
        result = None
        if holds:  # noted before too: a set_lora that fails half-way leaves the slot to be reset
            slots.add(index)
            result = method(self, index, *args, **kwargs)
            slots.add(index)  # (its own reset_lora took it out)
        elif index in slots or not self.__dict__.get("rmn_zeroed", False):
            result = method(self, index, *args, **kwargs)
            slots.discard(index)
        elif isinstance(wrapper, GroupedPunicaWrapperCPU):  # a reset of a slot all zeros already: skipped
            wrapper.skipped_resets += 1
        if by_buffer and isinstance(wrapper, GroupedPunicaWrapperCPU):
            wrapper.held_slots[id(self.lora_a_stacked)] = slots
        return result

    track.rmn_bypass = True  # type: ignore[attr-defined]
    return track


def _created(method: Any) -> Any:
    """``create_lora_weights`` of a LoRA layer that also notes its slots are all zeros (vLLM makes them with
    ``torch.zeros``): from then on :func:`_tracking` knows which slots hold weights, and vLLM's reset of a slot
    that holds none (every layer an adapter does not target, on every adapter load: 90 of the demo model's
    120 layers under q/k/v adapters, 1.3 MiB of zeros written per layer) is skipped."""

    @functools.wraps(method)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        self.__dict__["rmn_slots"] = set()
        self.__dict__["rmn_zeroed"] = True
        return result

    create.rmn_bypass = True  # type: ignore[attr-defined]
    return create


def bypass_idle_layers() -> list[str]:
    """Wrap vLLM's linear, embedding and lm_head LoRA layers (every subclass of ``BaseLinearLayerWithLoRA``,
    ``VocabParallelEmbeddingWithLoRA`` and ``LogitsProcessorWithLoRA``): ``set_lora``/``reset_lora`` note which
    slots hold weights in the layer (lm_head: for :meth:`GroupedPunicaWrapperCPU.add_lora_logits`, which adds
    nothing when no slot of the batch holds lm_head weights — most adapters have none), and ``forward`` (not
    lm_head's), when its wrapper is a :class:`GroupedPunicaWrapperCPU` and no slot of the batch
    holds weights there (a batch without adapters; a layer the batch's adapters do not target, e.g. the MLP
    under q/v adapters), returns its base layer's ``forward``: the same op on the same weights, so the same
    bits as the LoRA path, which adds exactly zero there, without the LoRA bookkeeping (~13 % of a decode
    step of the demo model on 2 cores). Other wrappers (CUDA's) never set ``active_slots``.
    ``create_lora_weights`` notes the new slots are zeros, so a reset of a slot that holds no weights
    (:func:`_created`) is skipped. Returns the methods wrapped now (idempotent)."""
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.layers.logits_processor import LogitsProcessorWithLoRA
    from vllm.lora.layers.vocab_parallel_embedding import VocabParallelEmbeddingWithLoRA

    todo: list[type] = [BaseLinearLayerWithLoRA, VocabParallelEmbeddingWithLoRA, LogitsProcessorWithLoRA]
    wrapped: list[str] = []
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        logits = issubclass(cls, LogitsProcessorWithLoRA)  # its forward stays: add_lora_logits decides
        wraps: dict[str, Callable[[Any], Any]] = {
            "create_lora_weights": _created,
            "set_lora": functools.partial(_tracking, holds=True, by_buffer=logits),
            "reset_lora": functools.partial(_tracking, holds=False, by_buffer=logits),
        }
        if not logits:
            wraps["forward"] = _bypassing
        for name, wrap in wraps.items():
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "rmn_bypass", False):
                setattr(cls, name, wrap(method))
                wrapped.append(f"{cls.__qualname__}.{name}")
    return wrapped


def selected() -> bool:
    """True when vLLM's CPU platform names this wrapper."""
    from vllm.platforms.cpu import CpuPlatform

    return bool(CpuPlatform.get_punica_wrapper() == QUALNAME)


def _manager(worker: Any) -> Any:
    """vLLM's LoRA model manager in a worker (None without LoRA)."""
    runner = getattr(worker, "model_runner", worker)
    return getattr(getattr(runner, "lora_manager", None), "_adapter_manager", None)


def _wrappers(manager: Any) -> list[GroupedPunicaWrapperCPU]:
    wrappers = getattr(manager, "punica_wrapper_mapping", {}) or {}
    return [w for w in wrappers.values() if isinstance(w, GroupedPunicaWrapperCPU)]


def worker_reports(worker: Any) -> list[dict[str, Any]]:
    """The :meth:`GroupedLoRA.report` of every grouped wrapper in a vLLM worker (run there through
    ``collective_rpc``) with its ``idle_batches``, ``bypassed_calls``, ``bypassed_logits`` and
    ``skipped_resets``; empty without LoRA or with vLLM's own wrapper."""
    wrappers = _wrappers(_manager(worker))
    for w in wrappers:
        w._grouping()  # report in the process-wide mode of now
    return [
        {
            **w.grouped.report(),
            "idle_batches": w.idle_batches,
            "bypassed_calls": w.bypassed_calls,
            "bypassed_logits": w.bypassed_logits,
            "skipped_resets": w.skipped_resets,
        }
        for w in wrappers
    ]


def worker_probe(worker: Any) -> list[dict[str, Any]]:
    """Probe every linear LoRA layer of a worker's model now, then :func:`worker_reports`."""
    manager = _manager(worker)
    for wrapper in _wrappers(manager):
        wrapper.probe_layers(getattr(manager, "modules", {}).values())
    return worker_reports(worker)


class ReportExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``) so the engine can ask, through
    ``collective_rpc("rmn_cpu_lora_report")``, what its grouped wrappers decided."""

    def rmn_cpu_lora_report(self) -> list[dict[str, Any]]:
        return worker_reports(self)

    def rmn_cpu_lora_probe(self) -> list[dict[str, Any]]:
        return worker_probe(self)
