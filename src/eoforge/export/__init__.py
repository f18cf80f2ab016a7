"""Export: ONNX graphs of the model and the baseline (checked for parity), the MLM STAC item."""
