from jedi_deploy.contracts.header import read_safetensors_metadata


def test_pretrained_checkpoint_describes_its_expert(expert_paths, datasets):
    by_name = {d.name: d for d in datasets}
    for p in expert_paths:
        meta = read_safetensors_metadata(p, "expert")
        assert tuple(meta["categories"]) == by_name[meta["dataset"]].categories
        assert meta["pretrain"]["num_samples"] == len(by_name[meta["dataset"]].samples("train"))
        assert 0 <= meta["pretrain"]["train_acc1"] <= 100


def test_a_holdout_is_never_seen_by_the_expert_and_is_what_jedi_validates_on(datasets, tmp_path):
    """`jedi pretrain --holdout 0.25`: a class-stratified quarter of the training list is kept out
    (listed beside the checkpoint and in its card); JEDI then validates on exactly those videos,
    trains on the rest, and refuses a cache that lacks them."""
    import shutil

    import pytest

    from jedi_deploy.contracts.config import JEDIConfig
    from jedi_deploy.contracts.errors import CacheMismatchError
    from jedi_deploy.models.registry import load_expert
    from jedi_deploy.train.cache import build_cache
    from jedi_deploy.train.cached import load_cache
    from jedi_deploy.train.data import build_train_data
    from jedi_deploy.train.pretrain import holdout_list, pretrain_expert

    d = datasets[0]
    train = d.samples("train")
    path = pretrain_expert(d, "tiny_tsn", tmp_path / "e.safetensors", epochs=1, progress=False, holdout=0.25)
    expert = load_expert(path)
    held = expert.holdout
    listed = [line.split()[0] for line in holdout_list(path).read_text().splitlines()]
    assert held and list(held) == listed
    meta = read_safetensors_metadata(path, "expert")
    assert meta["pretrain"]["num_samples"] == len(train) - len(held) and meta["pretrain"]["holdout"] == len(held)
    by_class = {}
    for s in train:
        by_class.setdefault(s.label, []).append(str(s.path.relative_to(d.root)))
    for c, rows in by_class.items():  # every class held out, never a whole class
        k = sum(r in held for r in rows)
        assert 1 <= k < len(rows) and abs(k - 0.25 * len(rows)) <= 1
    build_cache([expert], [d], tmp_path / "cache", splits=("train", "test"), progress=False)
    cache = load_cache(tmp_path / "cache")
    assert cache.experts[0].holdout == held  # the card travels with the cache
    data = build_train_data(cache, JEDIConfig(epochs=1))
    split = cache.split(d.name, "train")
    val_rows = [i for i, p in enumerate(split.samples) if p in set(held)]
    assert len(data.val[d.name].labels) == len(held)
    assert data.val[d.name].labels.tolist() == split.labels[val_rows].tolist()
    assert data.summary()[d.name]["train"] == len(train) - len(held)
    # a cache of another list (without the held-out videos): refused, not silently re-split
    other = tmp_path / "copy" / d.root.name
    shutil.copytree(d.root, other)
    lines = (other / "train.txt").read_text().splitlines()
    (other / "train.txt").write_text("\n".join(x for x in lines if x.split()[0] not in set(held)) + "\n")
    from jedi_deploy.media.datasets import load_dataset

    build_cache([expert], [load_dataset(other)], tmp_path / "cache2", splits=("train", "test"), progress=False)
    with pytest.raises(CacheMismatchError, match="pretrained without"):
        build_train_data(load_cache(tmp_path / "cache2"), JEDIConfig(epochs=1))


def test_a_datasets_own_val_list_is_its_validation(datasets, expert_paths, tmp_path):
    """A dataset that ships val.txt is validated on it (cached as the split "val"), and its whole
    training split trains; without it, the seeded share of the training split validates."""
    import shutil

    from jedi_deploy.contracts.config import JEDIConfig
    from jedi_deploy.media.datasets import load_dataset
    from jedi_deploy.models.registry import load_expert
    from jedi_deploy.train.cache import build_cache
    from jedi_deploy.train.cached import load_cache
    from jedi_deploy.train.data import build_train_data

    d = datasets[0]
    root = tmp_path / "data" / d.root.name
    shutil.copytree(d.root, root)
    (root / "val.txt").write_text((root / "test.txt").read_text())  # a validation list of its own
    expert = load_expert(next(p for p in expert_paths if p.stem == d.name))
    build_cache([expert], [load_dataset(root)], tmp_path / "cache", progress=False)
    cache = load_cache(tmp_path / "cache")
    data = build_train_data(cache, JEDIConfig(epochs=1))
    assert data.val[d.name].labels.tolist() == cache.split(d.name, "val").labels.tolist()
    assert data.summary()[d.name]["train"] == len(cache.split(d.name, "train").labels)
    assert data.summary()[d.name]["val_source"] == "the dataset's val.txt"
    plain = build_train_data(cache, JEDIConfig(epochs=1, val_fraction=0.0))  # no validation asked: none
    assert len(plain.val[d.name].labels) == 0
