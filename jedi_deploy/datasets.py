"""Datasets on disk, in MMAction2's layout (torch-free).

A dataset is a folder with ``classes.txt`` (one class name per line, line i = label i)
and one annotation list per split: ``<split>.txt`` in MMAction2's list format (lines
``relative/path.mp4 label``), or ``<split>.csv`` with a header naming a ``path`` column and,
optionally, a ``label`` column (missing or empty label = unlabeled). Label -1 = unlabeled;
paths are relative to the folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import AnnotationError, InputError

CLASSES_FILE = "classes.txt"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class VideoDataset:
    name: str
    root: Path
    categories: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def splits(self) -> list[str]:
        lists = [p for p in self.root.glob("*.txt") if p.name != CLASSES_FILE] + list(self.root.glob("*.csv"))
        stems = [p.stem for p in lists]
        both = sorted({s for s in stems if stems.count(s) > 1})
        if both:
            raise AnnotationError(f"{self.root}: split(s) {both} have both a .txt and a .csv list; keep one")
        return sorted(stems)

    def samples(self, split: str) -> list[Sample]:
        csv_path = self.root / f"{split}.csv"
        if csv_path.is_file() and not (self.root / f"{split}.txt").is_file():
            return read_annotations(csv_path, self.root, self.num_classes)
        return read_annotations(self.root / f"{split}.txt", self.root, self.num_classes)


def read_classes(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise AnnotationError(f"class-name file not found: {path}")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise AnnotationError(f"{path}: no class names (expected one name per line)")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise AnnotationError(f"{path}: duplicate class names {dup}")
    return names


def _label(text: str, where: str, num_classes: int) -> int:
    try:
        label = int(text)
    except ValueError:
        raise AnnotationError(f"{where}: label {text!r} is not an integer") from None
    if not -1 <= label < num_classes:
        raise AnnotationError(f"{where}: label {label} outside [0, {num_classes}) (-1 marks unlabeled samples)")
    return label


def manifest_rows(path: Path, label_required: bool = True) -> list[tuple[str, str, str]]:
    """``(where, relative path, label text)`` per entry of a video list; ``where`` is
    ``file:line`` for error messages. ``.csv``: a header naming ``path`` and optionally ``label``.
    Otherwise an MMAction2 list, ``path label`` per line (``#`` comments and blank lines skipped);
    with ``label_required`` False a line whose last word is not an integer is all path."""
    import csv

    if not path.is_file():
        raise AnnotationError(f"annotation list not found: {path}")
    rows = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise AnnotationError(f"{path}: CSV header must name a 'path' column (and optionally 'label'), "
                                      f"got {reader.fieldnames}")
            for row in reader:
                rows.append((f"{path}:{reader.line_num}", (row.get("path") or "").strip(),
                             (row.get("label") or "").strip()))
    else:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) == 2 and (label_required or parts[1].lstrip("-").isdigit()):
                rows.append((f"{path}:{lineno}", *parts))
            elif label_required:
                raise AnnotationError(f"{path}:{lineno}: expected 'relative/path.mp4 label', got {line!r}")
            else:
                rows.append((f"{path}:{lineno}", line.strip(), ""))
    for where, rel, _ in rows:
        if not rel:
            raise AnnotationError(f"{where}: empty path")
    if not rows:
        raise AnnotationError(f"{path}: annotation list has no samples")
    return rows


def read_annotations(path: Path, root: Path, num_classes: int) -> list[Sample]:
    """Parse an MMAction2 list file or a CSV manifest (a ``label`` column is optional there:
    missing labels are -1, unlabeled); every error names the file and line."""
    return [Sample(root / rel, _label(lab or "-1", where, num_classes))
            for where, rel, lab in manifest_rows(path, label_required=path.suffix.lower() != ".csv")]


def load_dataset(root: str | Path, name: str | None = None) -> VideoDataset:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    return VideoDataset(name or root.name, root, read_classes(root / CLASSES_FILE))


def discover_datasets(root: str | Path) -> list[VideoDataset]:
    """``root`` is one dataset (has classes.txt) or a folder of dataset folders."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    if (root / CLASSES_FILE).is_file():
        return [load_dataset(root)]
    found = [load_dataset(d) for d in sorted(root.iterdir()) if (d / CLASSES_FILE).is_file()]
    if not found:
        raise InputError(f"{root}: no dataset found (expected {CLASSES_FILE} in it or in its sub-folders)")
    return found
