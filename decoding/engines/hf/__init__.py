"""The transformers engine: any Hugging Face causal LM, its KV cache, and how one is found and loaded."""
