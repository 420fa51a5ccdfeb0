"""Export stage: fused students (and initial experts) to ONNX, validated against PyTorch."""
