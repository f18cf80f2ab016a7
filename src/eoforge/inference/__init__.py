"""Inference: ONNX Runtime sessions, sliding windows with blending, prediction COGs + items."""
