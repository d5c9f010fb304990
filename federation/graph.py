"""The composition graph of a resolved request: JSON nodes/edges and Graphviz DOT."""

from __future__ import annotations

from typing import Any

from federation.access import Resolution
from federation.tenants import Tenant


def composition_graph(base: str, res: Resolution, tenant: Tenant | None) -> dict[str, Any]:
    """Stack, composite id and graph (base ← components in order → composite) for ``/v1/federation/resolve``."""
    stack = res.stack
    components = []
    if stack is not None:
        layers = res.decision.layers or tuple(m.kind for m in stack.manifests)
        for part, manifest, layer in zip(stack.parts, stack.manifests, layers, strict=True):
            components.append(
                {
                    "layer": layer,
                    "id": part.id,
                    "version": part.version,
                    "weight": part.weight,
                    "kind": manifest.kind.value,
                    "owner": manifest.owner,
                    "visibility": manifest.visibility.value,
                    "rank": manifest.rank,
                    "sha256": manifest.sha256,
                }
            )
    target = stack.composite_id if stack else base
    nodes = [{"id": base, "type": "base"}] + [{"id": c["id"], "type": c["layer"]} for c in components]
    edges = [
        {"from": c["id"], "to": target, "weight": c["weight"], "order": i} for i, c in enumerate(components)
    ]
    if stack is not None:
        nodes.append({"id": target, "type": "composite"})
        edges.append({"from": base, "to": target, "weight": 1.0, "order": -1})
    dot = ["digraph composition {", "  rankdir=LR;", f'  "{base}" [shape=box];']
    for c in components:
        dot.append(f'  "{c["id"]}" [label="{c["id"]}@{c["version"]}\\n{c["layer"]}"];')
    if stack is not None:
        dot.append(f'  "{target}" [shape=doubleoctagon, label="{target}\\nrank {stack.rank}"];')
        dot.append(f'  "{base}" -> "{target}";')
        dot += [
            f'  "{c["id"]}" -> "{target}" [label="{i + 1}: w={c["weight"]:g}"];'
            for i, c in enumerate(components)
        ]
    dot.append("}")
    return {
        "model": base if stack is None else f"{base}:{stack.text}",
        "tenant": tenant.id if tenant else None,
        "source": res.decision.source,
        "task_source": res.decision.task_source,
        "task": res.decision.task,
        "task_confidence": None
        if res.decision.task_confidence is None
        else round(res.decision.task_confidence, 3),
        "composite_id": stack.composite_id if stack else None,
        "rank": stack.rank if stack else 0,
        "components": components,
        "graph": {"nodes": nodes, "edges": edges},
        "dot": "\n".join(dot),
    }
