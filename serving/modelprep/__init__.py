"""Building model directories offline: a tiny random Llama (tests) and the SmolLM2 demo model."""
