"""Export stage (``jedi_deploy.export``): fused students, initial experts and teacher ensembles to
ONNX, validated against PyTorch (``pipeline.export_all`` is the whole ``jedi export`` job);
TensorRT engines and Triton repositories."""
