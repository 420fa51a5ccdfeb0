"""The Open Inference Protocol (KServe v2 / Triton's HTTP API) beside ``/v1``, so existing clients
(``tritonclient.http``, KServe's) work unchanged.

Endpoints: ``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}[/versions/{v}]`` (metadata), ``.../ready``, ``POST .../infer``. A model's
input is the graph's own tensor (e.g. ``FP32[B, T, 3, S, S]`` normalised clips, or ``UINT8`` frames
for a ``--uint8-input`` graph; one per expert for a teacher ensemble) and its output the logits
``FP32[B, C]`` - no video decoding: clients send tensors, as they do to Triton. Tensors travel as
JSON ``data`` or with the binary tensor data extension (``Inference-Header-Content-Length``: the
JSON header, then each tensor's raw bytes); outputs are returned binary when the request asks
(``binary_data_output``, or ``binary_data`` on a requested output), as tritonclient does by default.
Errors follow the protocol: ``{"error": "message"}`` with a 4xx status. Versions: each model has
one, ``"1"``. gRPC is not offered (see the README). Torch-free.
"""

import asyncio
import json
import math

import numpy as np

from .openapi import INFER

#: The most elements one request's tensors may have in all (a batch of 2**51 is refused before any
#: allocation): 64 MiB of float32, the default upload limit.
MAX_ELEMENTS = 16 * 2**20
#: The largest JSON part of a request: parsing JSON holds Python's interpreter lock for the whole
#: parse (~30 ms per MiB), so a larger one would stall every other request, /healthz included.
#: Tensors of any size travel as binary data.
MAX_JSON_BYTES = 1 * 2**20

#: v2 datatypes <-> numpy
DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
             "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
NUMPY_TO_V2 = {np.dtype(v).name: k for k, v in DATATYPES.items()}
VERSION = "1"
HEADER = "Inference-Header-Content-Length"


class V2Error(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def model_metadata(name: str, model) -> dict:
    card = model.card
    return {"name": name, "versions": [VERSION], "platform": "onnxruntime_onnx",
            "inputs": [{"name": s.name, "datatype": NUMPY_TO_V2[np.dtype(s.dtype).name],
                        "shape": [-1, *[int(d) for d in s.shape[1:]]]} for s in card.inputs],
            "outputs": [{"name": card.output, "datatype": "FP32", "shape": [-1, len(card.categories)]}],
            "parameters": {"kind": card.kind, "categories": list(card.categories)}}


def parse_request(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """(the JSON part, the binary part) of an inference request body."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise V2Error(400, f"{HEADER} must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise V2Error(400, f"{HEADER} {n} is outside the {len(body)}-byte body")
        view = memoryview(body)
        head, rest = bytes(view[:n]), view[n:]
    else:
        head, rest = body, b""  # json.loads reads a bytearray as it is
    if len(head) > MAX_JSON_BYTES:
        raise V2Error(413, f"the JSON part of the request is {len(head) / 2**20:.1f} MiB, over the "
                           f"{MAX_JSON_BYTES / 2**20:g} MiB it may have: send large tensors with the binary tensor data "
                           f"extension ({HEADER}; tritonclient's default)")
    try:
        request = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise V2Error(400, f"the inference request is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise V2Error(400, "the inference request needs a non-empty 'inputs' list")
    for where, value in [("parameters", request.get("parameters"))] + [
            (f"inputs[{i}].parameters", t.get("parameters")) for i, t in enumerate(request["inputs"]) if isinstance(t, dict)]:
        if value is not None and not isinstance(value, dict):
            raise V2Error(400, f"'{where}' must be an object, got {type(value).__name__}")
    outputs = request.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("parameters", {}), dict) for o in outputs)):
        raise V2Error(400, "'outputs' must be a list of objects like {\"name\": ..., \"parameters\": {...}}")
    return request, rest


def read_inputs(request: dict, binary: bytes, model) -> dict[str, np.ndarray]:
    """The feed of ``model`` from a request's input tensors, checked against the model's inputs."""
    specs = {s.name: s for s in model.card.inputs}
    feed, offset = {}, 0
    for t in request["inputs"]:
        if not isinstance(t, dict) or not {"name", "shape", "datatype"} <= set(t):
            raise V2Error(400, "every input needs 'name', 'shape' and 'datatype'")
        name, dtype = t["name"], t["datatype"]
        if not isinstance(name, str) or not isinstance(dtype, str):
            raise V2Error(400, "an input's 'name' and 'datatype' must be strings")
        if name not in specs:
            raise V2Error(400, f"unknown input {name!r}; the model takes {sorted(specs)}")
        spec = specs[name]
        want = NUMPY_TO_V2[np.dtype(spec.dtype).name]
        if dtype != want:
            raise V2Error(400, f"input {name!r} must be {want}, got {dtype}")
        if not isinstance(t["shape"], list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                        for d in t["shape"]):
            raise V2Error(400, f"input {name!r}: shape must be a list of integers, got {str(t['shape'])[:100]}")
        shape = list(t["shape"])
        sample = [int(d) for d in spec.shape[1:]]
        if len(shape) != len(sample) + 1 or shape[1:] != sample or shape[0] < 1:
            raise V2Error(400, f"input {name!r} must have shape [batch, {', '.join(map(str, sample))}], got {shape}")
        elements = math.prod(shape)
        if elements > MAX_ELEMENTS:
            raise V2Error(413, f"input {name!r}: batch {shape[0]} is {elements} values, over the {MAX_ELEMENTS} a "
                               "request may send; send smaller batches")
        size = t.get("parameters", {}).get("binary_data_size") if t.get("parameters") else None
        np_type = DATATYPES[dtype]
        if size is not None:
            count = elements * np.dtype(np_type).itemsize
            if not isinstance(size, int) or size != count or offset + count > len(binary):
                raise V2Error(400, f"input {name!r}: binary_data_size {size} does not match its shape "
                                   f"{shape} ({count} bytes) or the body")
            x = np.frombuffer(binary, dtype=np_type, count=elements, offset=offset).reshape(shape)
            offset += count
        elif "data" in t:
            try:
                x = np.asarray(t["data"], dtype=np_type).reshape(shape)
            except (ValueError, TypeError) as e:
                raise V2Error(400, f"input {name!r}: data does not fit shape {shape} ({e})") from None
        else:
            raise V2Error(400, f"input {name!r} has neither 'data' nor a binary_data_size")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise V2Error(400, f"input {name!r} holds NaN or infinite values; the model takes finite numbers")
        feed[name] = np.ascontiguousarray(x)
    missing = sorted(set(specs) - set(feed))
    if missing:
        raise V2Error(400, f"missing input(s) {missing}")
    if len({x.shape[0] for x in feed.values()}) > 1:
        raise V2Error(400, "every input must have the same batch size")
    return feed


def response(name: str, request: dict, logits: np.ndarray, output: str) -> tuple[bytes, dict]:
    """(body, extra headers) of an inference response: JSON, or the JSON header + raw bytes."""
    wanted = request.get("outputs")
    if wanted:
        names = [o.get("name") for o in wanted if isinstance(o, dict)]
        if names != [output]:
            raise V2Error(400, f"unknown output(s) {[n for n in names if n != output]}; the model has {output!r}")
        binary = bool((wanted[0].get("parameters") or {}).get("binary_data", False))
    else:
        binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    out = {"name": output, "datatype": "FP32", "shape": list(logits.shape)}
    body = {"model_name": name, "model_version": VERSION, "outputs": [out]}
    if "id" in request:
        body["id"] = request["id"]
    if not binary:  # JSON has no NaN: a non-finite logit is null
        out["data"] = [v if math.isfinite(v) else None for v in logits.ravel().tolist()]
        return json.dumps(body).encode(), {"Content-Type": "application/json"}
    raw = logits.tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps(body).encode()
    return head + raw, {"Content-Type": "application/octet-stream", HEADER: str(len(head))}


def add_routes(app, service) -> None:
    """Mount the v2 endpoints on ``app`` for ``service``'s models."""
    from fastapi import Request
    from starlette.responses import JSONResponse, Response

    from jedi_deploy.contracts.header import PACKAGE_VERSION as __version__

    def error(status: int, message: str) -> JSONResponse:
        service.metrics.errors.labels("v2").inc()
        return JSONResponse({"error": message}, status_code=status)

    def find(name: str, version: str | None):
        if name not in service.models:
            raise V2Error(404, f"unknown model {name!r}; served: {sorted(service.models)}")
        if version is not None and version != VERSION:
            raise V2Error(404, f"model {name!r} has version {VERSION!r} only, not {version!r}")
        return service.models[name]

    @app.get("/v2")
    async def server_metadata():
        return {"name": "jedi-deploy", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if service.stopping:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    async def metadata(name: str, version: str | None = None):
        try:
            return model_metadata(name, find(name, version))
        except V2Error as e:
            return error(e.status, e.message)

    async def model_ready(name: str, version: str | None = None):
        try:
            find(name, version)
        except V2Error as e:
            return error(e.status, e.message)
        if service.stopping:
            return JSONResponse({"name": name, "ready": False}, status_code=503)
        return {"name": name, "ready": True}

    async def infer(name: str, request: Request, version: str | None = None):
        try:
            model = find(name, version)
            body = bytearray()  # chunks appended in place: about 1x the body, not chunks + their join
            async for chunk in request.stream():  # the upload guard caps the size and times out a stalled one
                body += chunk
            # parsing, conversion and serialisation are CPU work: off the event loop, like the run
            req, binary = await asyncio.to_thread(parse_request, body, request.headers.get(HEADER))
            feed = await asyncio.to_thread(read_inputs, req, binary, model)
            loop = asyncio.get_running_loop()
            try:
                logits = await loop.run_in_executor(service.decode_pool, model.run, feed)
            except Exception as e:  # the runtime refuses values it cannot run
                raise V2Error(400, f"the model could not run this input ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
            content, headers = await asyncio.to_thread(response, name, req, logits, model.card.output)
        except V2Error as e:
            return error(e.status, e.message)
        return Response(content, headers=headers)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix, metadata, methods=["GET"])
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        app.add_api_route(prefix + "/infer", infer, methods=["POST"], openapi_extra=INFER)
