"""The Open Inference Protocol (KServe v2) beside /v1, driven by tritonclient.http as existing clients
drive Triton: health, metadata, readiness, inference with binary and JSON tensors, errors."""
from __future__ import annotations

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from jedi_deploy.serve.runtime import OnnxModel  # noqa: E402


def test_tritonclient_speaks_to_jedi_serve(onnx_dir, test_video):
    from support.service import start, stop

    student = sorted(onnx_dir.glob("*.student.onnx"))[0]
    proc, addr = start([student])
    try:
        import requests

        name = requests.get(f"http://{addr}/v1/models", timeout=30).json()["models"][0]["name"]
        client = httpclient.InferenceServerClient(addr)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
        assert client.is_model_ready(name, "1") and not client.is_model_ready("nope")
        assert client.get_server_metadata()["name"] == "jedi-deploy"
        meta = client.get_model_metadata(name)
        model = OnnxModel(student)
        spec = model.card.inputs[0]
        assert meta["inputs"][0] == {"name": spec.name, "datatype": "FP32", "shape": [-1, *spec.shape[1:]]}
        assert meta["outputs"][0]["shape"] == [-1, len(model.categories)]
        x = np.concatenate([model.prepare(test_video)[spec.name]] * 2)  # a batch of 2 clips
        want = model.run({spec.name: x})
        for binary in (True, False):  # the binary tensor extension (tritonclient's default) and plain JSON
            inp = httpclient.InferInput(spec.name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outputs = None if binary else [httpclient.InferRequestedOutput(model.card.output, binary_data=False)]
            res = client.infer(name, [inp], outputs=outputs, request_id="r1")
            np.testing.assert_allclose(res.as_numpy(model.card.output), want, rtol=1e-5, atol=1e-5)
            assert res.get_response()["id"] == "r1" and res.get_response()["model_version"] == "1"
        bad = [(httpclient.InferInput("nope", list(x.shape), "FP32"), "unknown input"),
               (httpclient.InferInput(spec.name, [2, 1, 2], "FP32"), "must have shape"),
               (httpclient.InferInput(spec.name, list(x.shape), "UINT8"), "must be FP32")]
        for inp, needle in bad:
            data = np.zeros(inp.shape(), np.uint8 if inp.datatype() == "UINT8" else np.float32)
            inp.set_data_from_numpy(data)
            with pytest.raises(InferenceServerException, match=needle):
                client.infer(name, [inp])
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.infer("nope", [httpclient.InferInput(spec.name, list(x.shape), "FP32").set_data_from_numpy(x)])
        with pytest.raises(InferenceServerException, match="version"):
            client.get_model_metadata(name, "7")
        assert client.is_server_live()  # the service goes on
    finally:
        stop(proc)
