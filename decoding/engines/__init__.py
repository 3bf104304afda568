"""Where next-token scores come from: transformers (`hf`, with its KV cache), llama.cpp (`llama`) and
OpenAI-style servers (`server`), each behind `core.engine`'s protocols; `loading` picks and loads one."""
