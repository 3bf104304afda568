"""Where next-token scores come from: transformers (`hf`, with its KV cache), llama.cpp (`llama`) and
OpenAI-style servers (`server`), each a package behind `core.engine`'s protocols. `registry` is the
one table of them and what a load is asked for; below the engines, `embedded` (the default model),
`runtime` (device, dtype, collector and malloc) and `memory` (will it fit?) serve them all."""
