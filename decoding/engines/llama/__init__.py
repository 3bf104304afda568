"""The llama.cpp engine (llama-cpp-python): a .gguf file run as it is, quantized."""
