import pytest

from jedi_deploy.contracts.errors import AnnotationError, InputError
from jedi_deploy.media.datasets import discover_datasets, load_dataset


def _dataset(tmp_path, lines, classes="a\nb\n"):
    (tmp_path / "classes.txt").write_text(classes)
    (tmp_path / "train.txt").write_text(lines)
    return load_dataset(tmp_path)


def test_reads_mmaction2_lists_with_unlabeled_samples(tmp_path):
    ds = _dataset(tmp_path, "v/x.mp4 0\n# comment\n\nv/y z.mp4 -1\n")
    s = ds.samples("train")
    assert [(x.path.relative_to(tmp_path).as_posix(), x.label) for x in s] == [("v/x.mp4", 0), ("v/y z.mp4", -1)]
    assert ds.categories == ("a", "b") and ds.splits() == ["train"]


@pytest.mark.parametrize("line,match", [("v/x.mp4 2", r"train.txt:1: label 2 outside \[0, 2\)"),
                                        ("v/x.mp4 one", "train.txt:1: label 'one' is not an integer"),
                                        ("justapath", "train.txt:1: expected")])
def test_bad_annotation_lines_name_file_and_line(tmp_path, line, match):
    with pytest.raises(AnnotationError, match=match):
        _dataset(tmp_path, line + "\n").samples("train")


def test_missing_and_duplicate_classes(tmp_path):
    with pytest.raises(AnnotationError, match="class-name file not found"):
        load_dataset(tmp_path)
    with pytest.raises(AnnotationError, match="duplicate class names"):
        _dataset(tmp_path, "v 0\n", classes="a\na\n")


def test_discover_finds_dataset_folders(tmp_path):
    for n in ("b", "a"):
        (tmp_path / n).mkdir()
        (tmp_path / n / "classes.txt").write_text("x\n")
    assert [d.name for d in discover_datasets(tmp_path)] == ["a", "b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no dataset found"):
        discover_datasets(tmp_path / "empty")
    with pytest.raises(InputError, match="data folder not found"):
        discover_datasets(tmp_path / "missing")


def test_csv_manifests(tmp_path):
    from jedi_deploy.media.datasets import load_dataset

    (tmp_path / "classes.txt").write_text("a\nb\n")
    (tmp_path / "train.csv").write_text("path,label,source\nv/1.mp4,1,x\nv/2.mp4,,y\n")
    (tmp_path / "extra.csv").write_text("path\nv/3.mp4\n")
    d = load_dataset(tmp_path)
    assert d.splits() == ["extra", "train"]
    assert [(s.path.name, s.label) for s in d.samples("train")] == [("1.mp4", 1), ("2.mp4", -1)]
    assert [s.label for s in d.samples("extra")] == [-1]
    (tmp_path / "bad.csv").write_text("path,label\nv/1.mp4,7\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:2: label 7 outside"):
        d.samples("bad")
    (tmp_path / "nohdr.csv").write_text("file,label\nv/1.mp4,1\n")
    with pytest.raises(AnnotationError, match="'path' column"):
        d.samples("nohdr")
    (tmp_path / "train.txt").write_text("v/1.mp4 0\n")
    with pytest.raises(AnnotationError, match="both a .txt and a .csv"):
        d.splits()
