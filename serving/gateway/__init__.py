"""The OpenAI-compatible ingress (federation router), one module per surface.

- :mod:`~serving.gateway.app`: the FastAPI app and its one error handler (:mod:`serving.errors`)
- :mod:`~serving.gateway.state`: what every route works with (config, gate, metrics, admission, handles)
- :mod:`~serving.gateway.openai_routes`: chat, completions, models, resolve, probes
- :mod:`~serving.gateway.dispatch`: the generation path (admission lease, one retry, deadline)
- :mod:`~serving.gateway.sse`: the SSE relay
- :mod:`~serving.gateway.timing`: the answer's Server-Timing (where its time went, hop by hop)
- :mod:`~serving.gateway.ray_errors`: what a failed engine call means
- :mod:`~serving.gateway.adapter_routes`, :mod:`~serving.gateway.data_routes`: adapters; clean room,
  comparison, harmonisation, governance
- :mod:`~serving.gateway.ingress`: the Serve deployment class (the only module here that needs Ray running)

Every answer carries ``x-request-id``; generations also ``x-rmn-model`` (the version-pinned stack that served
it), ``x-rmn-composite`` (its content-addressed id), ``x-rmn-replica`` and ``server-timing`` (queue, load,
engine, call and router milliseconds: :mod:`~serving.gateway.timing`). The gateway never reads adapter
weights: engine replicas compose and load them on their own node.
"""
