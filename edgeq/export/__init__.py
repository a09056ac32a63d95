"""Exporters: every source format becomes an fp32 ONNX ``Artifact``."""
