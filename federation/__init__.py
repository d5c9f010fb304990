"""Who may compose what: tenants and their keys, the stack policy (request -> ordered, weighted,
version-pinned stack), the access gate, the composition graph, audit and rate limits.

Pure Python: no Ray, no vLLM (imports flow serving -> federation -> adapters, cleanroom; the planning
decisions live beside it in ``planning/``).
"""
