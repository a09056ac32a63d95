"""llama.cpp: GGUF conversion, checks and bundles."""
