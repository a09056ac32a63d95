"""Weight-only quantization (RTN/HQQ/GPTQ/AWQ, blockwise packing) and its size accounting."""
