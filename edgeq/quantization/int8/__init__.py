"""INT8: calibration, the QDQ writer, the --max-drop search."""
