"""A model served by vLLM, SGLang or llama-server: the engine, its HTTP client, and the checks on
every reply."""
