"""Checkpoint -> ONNX export (needs the export extra) and its manifest (needs nothing extra)."""
