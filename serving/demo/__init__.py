"""``make demo``: embedded defaults (demo model, tenants, clean room), demo adapter corpora, the demo run."""
