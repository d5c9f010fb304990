"""Media planning over a retailer's market: the synthetic market with its ground truth, harmonisation of
retailer fields, response-curve fits, the budget LP, scoring on the truth, and the full-data vs clean-room
comparison (written once, run in-process or through Ray Serve). Pure Python: no Ray, no vLLM; imports only
``adapters`` and ``cleanroom`` of ours (serving -> federation, planning -> adapters, cleanroom)."""
