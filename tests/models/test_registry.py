"""Schema and round-trip tests over every registered architecture."""
import pytest
import torch

from jedi_deploy.contracts.errors import CheckpointError, ConfigError
from jedi_deploy.models.archs import ARCHS, build_expert, get_arch
from jedi_deploy.models.registry import load_expert, save_expert


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_entry_schema(arch):
    e = ARCHS[arch]
    assert e.name == arch and e.family and e.description
    assert "jedi-safetensors" in e.formats
    model = build_expert(arch, 5, **e.extra.get("test_kwargs", {}))
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 5
    assert model.head.in_features == model.encoder.embed_dim


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_encoder_plus_head_is_the_model_and_save_load_is_exact(arch, tmp_path):
    torch.manual_seed(0)
    entry = ARCHS[arch]
    kwargs = entry.extra.get("test_kwargs", {})
    model = build_expert(arch, 4, **kwargs).eval()
    spec = entry.preprocess
    x = torch.randn(2, *entry.extra.get("test_input", spec.input_shape()))
    with torch.no_grad():
        full = model(x)
        torch.testing.assert_close(model.head(model.encoder(x)), full, rtol=0, atol=0)
    path = save_expert(model, tmp_path / "e.safetensors", name="e", arch=arch, arch_kwargs=kwargs,
                       dataset="d", categories=list("abcd"), preprocess=spec)
    loaded = load_expert(path)
    assert loaded.categories == tuple("abcd") and loaded.preprocess == spec and loaded.embed_dim == model.head.in_features
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), full, rtol=0, atol=0)


def test_wrong_shape_checkpoint_and_hash_mismatch(tmp_path):
    model = build_expert("tiny_tsn", 4)
    spec = ARCHS["tiny_tsn"].preprocess
    path = save_expert(model, tmp_path / "e.safetensors", name="e", arch="tiny_tsn", arch_kwargs={},
                       dataset="d", categories=list("abcd"), preprocess=spec)
    # A checkpoint whose metadata claims another width than its tensors.
    from safetensors.torch import load_file, save_file

    from jedi_deploy.contracts.header import dump_metadata, read_safetensors_metadata

    meta = read_safetensors_metadata(path)
    meta["arch_kwargs"] = {"width": 8}
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata=dump_metadata(meta))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_expert(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="hash"):
        load_expert(path, expected_sha256="0" * 64)


def test_unknown_arch_and_arguments():
    with pytest.raises(ConfigError, match="registered"):
        get_arch("nope")
    with pytest.raises(ConfigError, match="unknown arguments"):
        build_expert("tiny_c3d", 3, depth=5)
