"""Measurement: the profiler, its worker process, EP placement, the OpenVINO environment."""
