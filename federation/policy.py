"""The policy that turns a request into an ordered, weighted adapter stack.

Order is always industry → retailer → manufacturer → task. Three ways in, in this precedence:
1. explicit: the model name names the stack (``base:retail_media+acme+brand_x*0.5+task_planning``);
2. structured: a ``federation`` object in the body (``retailer``, ``manufacturer``, ``task``, ``weights``,
   ``industry``) with model ``base`` or ``base:auto``; fields it leaves out fall back to 3;
3. implicit (model ``base:auto``): the industry adapter always, retailer and manufacturer from the
   tenant's identity, the task from the request or, failing that, the task classifier
   (:mod:`federation.task_classifier`) above ``task_confidence``.
Pure Python; access control is :func:`check_access`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from adapters import AdapterManifest, Visibility
from adapters.manifest import LAYER_ORDER, AdapterKind
from adapters.stack import StackPart
from federation.errors import InvalidRequest
from federation.task_classifier import TaskClassifier
from federation.tenants import Forbidden, Tenant

Layer = AdapterKind  # a stack's layers are the adapter kinds, in LAYER_ORDER
AUTO = "auto"


class PolicyError(InvalidRequest):
    """The request asks for an impossible stack."""


class FederationPolicy(BaseModel):
    """How implicit and structured stacks are built (part of the app config)."""

    model_config = ConfigDict(extra="forbid")

    industry_adapter: str | None = Field(
        default="retail_media", description="Industry adapter in every implicit stack."
    )
    task_adapters: dict[str, str] = Field(
        default_factory=lambda: {
            "planning": "task_planning",
            "creative": "task_creative",
            "harmonization": "task_harmonize",
        },
        description="Task name -> task adapter id.",
    )
    default_task: str | None = Field(
        default=None, description="Task when neither the request nor the classifier gives one."
    )
    task_confidence: float = Field(
        default=0.6,
        ge=0,
        le=1,
        description="The task classifier's choice is used only at this probability or above (chosen by "
        "cross-validation on the training split; bench/results/task-routing.json); below it, "
        "`default_task` or no task adapter.",
    )
    weights: dict[Layer, float] = Field(
        default_factory=lambda: dict.fromkeys(LAYER_ORDER, 1.0),
        description="Default weight per layer (a request's federation.weights overrides).",
    )


class FederationRequest(BaseModel):
    """The optional ``federation`` object of a chat/completion request body."""

    model_config = ConfigDict(extra="forbid")

    industry: bool = Field(default=True, description="Include the industry adapter.")
    retailer: str | None = Field(default=None, description="Retailer adapter id (default: the tenant's).")
    manufacturer: str | None = Field(
        default=None, description="Manufacturer adapter id (default: the tenant's)."
    )
    task: str | None = Field(
        default=None, description="Task name (planning, creative, harmonization) or task adapter id."
    )
    weights: dict[Layer, float] | None = Field(default=None, description="Per-layer weights, (0, 10].")
    explain: bool = Field(
        default=False,
        description="Add the full composition graph to a non-streamed answer (`rmn_composition`).",
    )


@dataclass(frozen=True)
class Decision:
    """The stack a request resolved to and how."""

    parts: tuple[StackPart, ...]
    layers: tuple[Layer, ...]
    source: Literal["explicit", "structured", "implicit", "base"]
    task_source: Literal["request", "classifier", "default"] | None = None
    task: str | None = None  # the task chosen (None: no task adapter)
    task_confidence: float | None = None  # the classifier's probability of its choice, when it was asked


def decide(
    tenant: Tenant,
    explicit: Sequence[StackPart],
    federation: FederationRequest | None,
    prompt_text: str,
    policy: FederationPolicy,
    kind_of: Callable[[str], str],
) -> Decision:
    """Resolve the request's stack (see the module docstring); ``kind_of(id)`` gives an adapter's kind."""
    auto = len(explicit) == 1 and explicit[0].id == AUTO
    if explicit and not auto:
        if federation is not None:
            raise PolicyError("give the stack either in 'model' or in 'federation', not both")
        return Decision(tuple(explicit), tuple(Layer(kind_of(p.id)) for p in explicit), "explicit")
    if not auto and federation is None:
        return Decision((), (), "base")
    fed = federation or FederationRequest()
    weights = {**policy.weights, **tenant.layer_weights, **(fed.weights or {})}
    confidence: float | None = None
    task_source: Literal["request", "classifier", "default"] | None = None
    task = fed.task
    if task is not None:
        task_source = "request"
    else:  # read the words: the classifier, trusted above the policy's threshold; else the fallback
        guess, confidence = TaskClassifier.shipped().predict(prompt_text)
        task = guess if confidence >= policy.task_confidence else None
        task_source = "classifier" if task else None
        fallback = tenant.default_task or policy.default_task
        if task is None and fallback:
            task, task_source = fallback, "default"
    chosen: dict[Layer, str | None] = {
        Layer.industry: policy.industry_adapter if fed.industry else None,
        Layer.retailer: fed.retailer or tenant.retailer,
        Layer.manufacturer: fed.manufacturer or tenant.manufacturer,
        Layer.task: policy.task_adapters.get(task, task) if task else None,
    }
    parts, layers = [], []
    for layer in LAYER_ORDER:
        adapter_id = chosen[layer]
        if adapter_id is None:
            continue
        kind = kind_of(adapter_id)
        if kind != layer:
            raise PolicyError(
                f"federation.{layer}: adapter {adapter_id!r} is a {kind} adapter, not a {layer} one"
            )
        w = weights.get(layer, 1.0)
        if not 0 < w <= 10:
            raise PolicyError(f"federation.weights.{layer} must be in (0, 10], got {w}")
        parts.append(StackPart(adapter_id, None, w))
        layers.append(layer)
    return Decision(
        tuple(parts), tuple(layers), "structured" if federation else "implicit", task_source, task, confidence
    )


def check_access(tenant: Tenant, manifests: Sequence[AdapterManifest]) -> None:
    """Raise Forbidden naming the first private component ``tenant`` may not compose."""
    for m in manifests:
        if not tenant.may_use(m.id, m.owner, m.visibility == Visibility.private):
            raise Forbidden(
                f"tenant {tenant.id!r} may not use adapter {m.id!r}: it is private to {m.owner!r} and not granted",
                m.id,
            )
