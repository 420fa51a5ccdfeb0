"""The typed file contracts: the ONNX model card, the bundle header and the cache header round-trip,
refuse newer formats and name what is missing."""
import json

import pytest
from safetensors.torch import save_file

from jedi_deploy.contracts.bundle import BundleHeader, read_bundle_header
from jedi_deploy.contracts.cache import CacheHeader, read_cache_header
from jedi_deploy.contracts.errors import CacheMismatchError, CheckpointError, InputError
from jedi_deploy.contracts.header import dump_metadata
from jedi_deploy.contracts.model_card import (
    CARD_FORMAT_VERSION,
    InputSpec,
    ModelCard,
    read_card,
)
from jedi_deploy.contracts.preprocess import Preprocess

PRE = Preprocess(num_frames=4, sampling="clip", crop=16)


def card(**kw):
    spec = InputSpec("video", "uint8", ("batch", 4, 16, 16, 3), "NTHWC", PRE, expert="e", expert_sha256="ab")
    return ModelCard(**{"kind": "student", "name": "e", "dataset": "d", "arch": "tiny_c3d", "categories": ("a", "b"),
                        "inputs": (spec,), "bundle_sha256": "cd", **kw})


def test_model_card_round_trips_through_metadata_props():
    c = card(precision="fp16", extra={"calibration": {"method": "minmax"}})
    back = ModelCard.from_props(c.to_props(), "m.onnx")
    assert back == c and back.input.uint8 and back.input.sample_shape() == (4, 16, 16, 3)
    assert back.expert_sha256 == "ab" and json.loads(c.to_props()["jedi"])["format_version"] == CARD_FORMAT_VERSION


def test_model_card_refuses_newer_formats_and_names_missing_fields():
    d = card().to_dict()
    with pytest.raises(InputError, match="m.onnx: written by a newer jedi-deploy"):
        ModelCard.from_dict({**d, "format_version": CARD_FORMAT_VERSION + 1}, "m.onnx")
    for field in ("categories", "inputs", "kind"):
        with pytest.raises(InputError, match=f"m.onnx: model card lacks field '{field}'"):
            ModelCard.from_dict({k: v for k, v in d.items() if k != field}, "m.onnx")
    bad_input = {**d, "inputs": [{k: v for k, v in d["inputs"][0].items() if k != "layout"}]}
    with pytest.raises(InputError, match="lacks field 'layout'"):
        ModelCard.from_dict(bad_input, "m.onnx")
    with pytest.raises(InputError, match="kind must be one of"):
        ModelCard.from_dict({**d, "kind": "teacherr"}, "m.onnx")
    with pytest.raises(InputError, match="no 'jedi' metadata"):
        ModelCard.from_props({}, "m.onnx")
    with pytest.raises(InputError, match="not valid JSON"):
        ModelCard.from_props({"jedi": "{"}, "m.onnx")


def test_format_1_cards_are_read():
    """Files exported before typed cards: flat keys."""
    v1 = {"format_version": 1, "kind": "expert", "name": "e", "dataset": "d", "arch": "r3d_18", "categories": ["a"],
          "preprocess": PRE.to_dict(), "input": "video", "output": "logits", "uint8_input": False, "views": 3,
          "input_shape": ["batch", 3, 4, 3, 16, 16], "expert_sha256": "ab", "average": "prob"}
    c = ModelCard.from_dict(v1, "old.onnx")
    assert c.input.layout == "NVTCHW" and c.input.views == 3 and c.input.sample_shape() == (3, 4, 3, 16, 16)
    assert c.expert_sha256 == "ab" and c.average == "prob" and c.input.preprocess == PRE
    teacher = {"format_version": 1, "kind": "teacher", "name": "d", "dataset": "d", "categories": ["a"],
               "inputs": [{"name": "video_0", "expert": "e", "preprocess": PRE.to_dict()}], "output": "logits",
               "expert_sha256": ["ab"]}
    t = ModelCard.from_dict(teacher, "t.onnx")
    assert t.kind == "teacher" and t.inputs[0].expert_sha256 == "ab" and t.expert_sha256 is None


def test_exported_files_carry_a_readable_card(onnx_dir, experts):
    c = read_card(onnx_dir / f"{experts[0].name}.student.onnx")
    assert c.kind == "student" and c.inputs[0].expert_sha256 == experts[0].sha256 and c.bundle_sha256
    with pytest.raises(InputError, match="not a readable ONNX file"):
        read_card(onnx_dir.parent / "nope.onnx")


def test_bundle_and_cache_headers_name_what_is_missing(bundle_path, cache_dir, tmp_path):
    h = read_bundle_header(bundle_path)
    assert BundleHeader.from_dict(h.to_dict(), "b") == h
    broken = {k: v for k, v in h.to_dict().items() if k != "datasets"}
    with pytest.raises(CheckpointError, match="bundle header lacks field 'datasets'"):
        BundleHeader.from_dict(broken, "b")
    no_dim = {**h.to_dict(), "experts": [{k: v for k, v in e.to_dict().items() if k != "embed_dim"} for e in h.experts]}
    with pytest.raises(CheckpointError, match="lacks field 'embed_dim'"):
        BundleHeader.from_dict(no_dim, "b")
    shard = next(cache_dir.glob("*/test.safetensors"))
    c = read_cache_header(shard)
    assert CacheHeader.from_dict(c.to_dict(), "s") == c and c.samples and c.categories
    path = tmp_path / "s.safetensors"
    import torch

    save_file({"labels": torch.zeros(1, dtype=torch.int64)}, str(path),
              metadata=dump_metadata({k: v for k, v in c.to_dict().items() if k != "categories"}))
    with pytest.raises(CacheMismatchError, match="cache header lacks field 'categories'"):
        read_cache_header(path)
