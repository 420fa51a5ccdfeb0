
import pytest
import torch
from safetensors.torch import load_file, save_file

from jedi_deploy.contracts.cache import shard_path
from jedi_deploy.contracts.errors import CacheMismatchError, InputError
from jedi_deploy.contracts.header import read_safetensors_metadata
from jedi_deploy.media.decode import load_clip
from jedi_deploy.train.cache import build_cache
from jedi_deploy.train.cached import load_cache


def test_cache_holds_every_expert_on_every_dataset(cache, experts, datasets):
    assert cache.expert_names == [e.name for e in experts]
    for d in datasets:
        for split in ("train", "test"):
            s = cache.split(d.name, split)
            assert len(s) == len(d.samples(split))
            for e in experts:
                assert s.emb[e.name].shape == (len(s), e.embed_dim)
                assert s.logits[e.name].shape == (len(s), e.num_classes)


def test_cached_embeddings_equal_the_encoder_on_the_decoded_video(cache, experts, datasets):
    d = datasets[1]
    sample = d.samples("test")[2]
    for e in experts:
        with torch.no_grad():
            want = e.encoder(torch.from_numpy(load_clip(sample.path, e.preprocess))[None])[0]
        torch.testing.assert_close(cache.split(d.name, "test").emb[e.name][2], want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache.heads[e.name]["weight"], e.head.weight)


def test_rerun_keeps_existing_shards_and_fp16(cache_dir, experts, datasets, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in cache_dir.glob("*/*.safetensors")}
    build_cache(experts, datasets, cache_dir, progress=False)
    assert {p: p.stat().st_mtime_ns for p in cache_dir.glob("*/*.safetensors")} == before
    build_cache(experts, datasets, tmp_path, splits=("test",), dtype="float16", progress=False)
    t = load_file(str(shard_path(tmp_path, datasets[0].name, "test")))
    assert t[f"emb.{experts[0].name}"].dtype == torch.float16


def test_cache_built_for_other_experts_is_refused(cache_dir, experts, datasets, tmp_path):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(cache_dir, copy)
    with pytest.raises(CacheMismatchError, match="cached for other experts"):
        build_cache(experts[::-1], datasets, copy, progress=False)
    # a shard from another expert set mixed into the folder
    p = shard_path(copy, datasets[0].name, "test")
    meta = read_safetensors_metadata(p)
    meta["experts"][0]["sha256"] = "0" * 64
    from jedi_deploy.contracts.header import dump_metadata

    save_file(load_file(str(p)), str(p), metadata=dump_metadata({k: v for k, v in meta.items() if k != "format_version"}))
    with pytest.raises(CacheMismatchError, match="other experts"):
        load_cache(copy)


def test_expert_without_its_dataset_and_nan_embeddings(cache_dir, experts, datasets, tmp_path):
    with pytest.raises(InputError, match="not among the datasets"):
        build_cache(experts, datasets[:1], tmp_path / "x", progress=False)
    import shutil

    copy = tmp_path / "nan"
    shutil.copytree(cache_dir, copy)
    p = shard_path(copy, datasets[0].name, "train")
    t = load_file(str(p))
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        md = f.metadata()
    t[f"emb.{experts[0].name}"][0, 0] = float("nan")
    save_file(t, str(p), metadata=md)
    with pytest.raises(InputError, match="NaN/Inf"):
        load_cache(copy)
    with pytest.raises(InputError, match="no cache shards"):
        load_cache(tmp_path)
