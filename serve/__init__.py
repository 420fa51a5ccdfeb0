"""Serving without torch: ONNX Runtime inference, the ``serve.infer`` script, latency bench.

Imports only numpy, onnxruntime, PyAV and the torch-free parts of ``jedi_deploy``.
"""
