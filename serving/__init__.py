"""Ray Serve deployments of rmn-lora. Importing this package imports neither Ray nor vLLM."""
