"""What every stage stands on: artifacts, targets, data, app I/O, runtime sessions, safe files, child processes, ONNX I/O."""
