"""Quantization stages."""
