"""What the endpoints take, for the OpenAPI schema at ``/openapi.json`` (and ``/docs``): the handlers
read their requests themselves (uploads stream to disk, forms and JSON are parsed off the event
loop), so FastAPI cannot infer these; they are declared here, once, as ``openapi_extra``. The
schema is what clients generate code from and what the property-based test
(tests/serve/test_schema_fuzz.py, schemathesis) draws its requests from."""
from __future__ import annotations

from .uploads import UPLOAD_FIELD

_FIELDS = {
    "model": ({"type": "string"}, "the served model (required when several are served)"),
    "topk": ({"type": "integer", "minimum": 1}, "labels per answer"),
    "window": ({"type": "number", "exclusiveMinimum": 0}, "seconds: a sliding-window timeline instead"),
    "stride": ({"type": "number", "exclusiveMinimum": 0}, "seconds between window starts"),
    "smooth": ({"type": "integer", "minimum": 1}, "windows averaged around each window"),
}

_QUERY = [{"name": k, "in": "query", "required": False, "schema": schema, "description": text}
          for k, (schema, text) in _FIELDS.items()]
_FILENAME = {"name": "filename", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "what answers and errors call a raw-body upload"}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_FORM = {"schema": {"type": "object", "required": [UPLOAD_FIELD],
                    "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary"},
                                   **{k: schema for k, (schema, _) in _FIELDS.items()}}}}

PREDICT = {"parameters": [*_QUERY, _FILENAME],
           "requestBody": {"required": True, "content": {"multipart/form-data": _FORM, "video/mp4": _BINARY,
                                                         "application/octet-stream": _BINARY}}}

JOBS = {"parameters": [*_QUERY, _FILENAME],
        "requestBody": {"required": True, "content": {
            "multipart/form-data": _FORM, "video/mp4": _BINARY,
            "application/json": {"schema": {"type": "object", "required": ["path"], "properties": {
                "path": {"type": "string", "description": "a file under --jobs-root"},
                **{k: schema for k, (schema, _) in _FIELDS.items()}}}}}}}

_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]},
    "data": {"type": "array", "items": {"type": "number"}},
    "parameters": {"type": "object"}}}

INFER = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}},
        "parameters": {"type": "object"}}}}}}}
