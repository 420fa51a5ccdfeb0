"""Serving without torch (``jedi_deploy.serve``): ONNX Runtime inference (``runtime``), the
``infer`` and ``serve`` commands (``cli``, also ``python -m jedi_deploy.serve.infer`` /
``.server``), the HTTP service (``server`` with ``config``, ``guard``, ``batcher``, ``metrics``)
and the latency benchmark (``bench``).

Imports only numpy, onnxruntime, PyAV, click, the service's web stack and the torch-free parts of
``jedi_deploy``.
"""
