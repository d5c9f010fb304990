"""Who may compose what: tenants and their keys, the stack policy (request -> ordered, weighted,
version-pinned stack), the access gate, the composition graph, audit and rate limits.

``federation.planning`` is the second job of this folder: the market, the planner and the comparison.
Pure Python: no Ray, no vLLM (imports flow serving -> federation -> adapters, cleanroom).
"""
