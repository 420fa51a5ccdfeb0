import numpy as np

from jedi_deploy.media.datasets import discover_datasets
from jedi_deploy.media.decode import decode_video
from jedi_deploy.media.synthetic import CLASSES, SIZE, benchmark_specs, render_clip


def test_benchmark_shape_mirrors_the_paper_setting():
    for quick in (False, True):
        specs = benchmark_specs(quick)
        assert len(specs) >= 3
        sizes = [len(s.classes) * s.train_per_class for s in specs]
        assert max(sizes) >= 10 * min(sizes)
        all_classes = [c for s in specs for c in s.classes]
        shared = {c for c in all_classes if all_classes.count(c) > 1}
        assert shared, "some classes must be shared between datasets"
        for s in specs:  # most classes of every dataset are its own
            assert sum(c in shared for c in s.classes) < len(s.classes) / 2 + 1
        assert len({(s.background, s.noise, s.speed) for s in specs}) == len(specs)
        assert {s.arch for s in specs} >= {"tiny_c3d", "tiny_tsn"}  # 3D and 2D families


def _x_centroid(frames):
    bright = frames.astype(float).sum(-1)
    mask = bright > np.percentile(bright, 95)
    xs = np.arange(SIZE)[None, None, :]
    return (mask * xs).sum((1, 2)) / np.maximum(mask.sum((1, 2)), 1)


def test_motion_pairs_share_appearance_and_differ_only_in_direction():
    spec = benchmark_specs()[0]
    right = render_clip("slide_right", spec, np.random.default_rng(3))
    left = render_clip("slide_left", spec, np.random.default_rng(3))
    assert CLASSES["slide_right"][:2] == CLASSES["slide_left"][:2]
    assert np.polyfit(np.arange(len(right)), _x_centroid(right), 1)[0] > 0.3
    assert np.polyfit(np.arange(len(left)), _x_centroid(left), 1)[0] < -0.3


def test_generation_is_deterministic_from_the_seed(data_root, tmp_path):
    from jedi_deploy.media.synthetic import generate_benchmark

    generate_benchmark(tmp_path, seed=0, quick=True, progress=False)
    for a, b in zip(discover_datasets(data_root), discover_datasets(tmp_path)):
        assert (a.root / "train.txt").read_text() == (b.root / "train.txt").read_text()
        assert a.categories == b.categories
        first = a.samples("test")[0].path.relative_to(a.root)
        np.testing.assert_array_equal(decode_video(a.root / first), decode_video(b.root / first))
    other = render_clip("red_ball", benchmark_specs()[1], np.random.default_rng([1, 0, 0, 0]))
    same = render_clip("red_ball", benchmark_specs()[1], np.random.default_rng([0, 0, 0, 0]))
    assert not np.array_equal(other, same)


def test_written_datasets_use_mmaction2_lists(datasets):
    for d in datasets:
        for split in ("train", "test"):
            samples = d.samples(split)
            assert all(s.path.suffix == ".mp4" and s.path.is_file() for s in samples)
            assert {s.label for s in samples} == set(range(d.num_classes))
