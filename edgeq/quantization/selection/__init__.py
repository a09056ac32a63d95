"""Choosing among quantized candidates: the accuracy gate and accuracy levels."""
