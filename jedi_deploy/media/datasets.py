"""Datasets on disk, in MMAction2's layout (torch-free).

A dataset is a folder with ``classes.txt`` (one class name per line, line i = label i)
and one annotation list per split: ``<split>.txt`` in MMAction2's list format (lines
``relative/path.mp4 label``), or ``<split>.csv`` with a header naming a ``path`` column and,
optionally, a ``label`` column (missing or empty label = unlabeled). Label -1 = unlabeled;
paths are relative to the folder.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from jedi_deploy.contracts.errors import AnnotationError, InputError

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


VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv",
                              ".3gp", ".ogv", ".ts"})


MANIFEST_EXTENSIONS = (".txt", ".csv")


@dataclass(frozen=True)
class Item:
    """One video to classify (``jedi infer``'s inputs, ``--calib-list`` / ``--eval-list``)."""

    path: Path
    label: int | None = None  # ground-truth class index from a manifest, if it gives one
    error: str | None = None  # why the entry cannot be read (found while listing a folder)


def folder_items(root: Path) -> list[Item]:
    """Every video under ``root`` (symlinked folders followed once), and an error item for every
    entry that cannot be read: a broken link, a link loop, a video name that is not a regular
    file (a FIFO would block a reader forever), a folder that cannot be listed."""
    items: list[Item] = []
    seen: set[tuple[int, int]] = set()

    def walk(folder: Path) -> None:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen:
            items.append(Item(folder, error=f"{folder}: link loop (leads back to a folder already searched)"))
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            items.append(Item(folder, error=f"{folder}: cannot list folder ({e.strerror or e})"))
            return
        for entry in entries:
            f = Path(entry.path)
            if entry.is_symlink():
                try:
                    f.resolve(strict=True)
                except FileNotFoundError:
                    items.append(Item(f, error=f"{f}: broken link (points to {os.readlink(f)}, which does not exist)"))
                    continue
                except (RuntimeError, OSError):
                    items.append(Item(f, error=f"{f}: link loop"))
                    continue
            if f.is_dir():
                walk(f)
            elif f.suffix.lower() in VIDEO_EXTENSIONS:
                items.append(Item(f) if f.is_file() else Item(f, error=f"{f}: not a regular file"))

    walk(root)
    return sorted(items, key=lambda it: str(it.path))


def _manifest(path: Path) -> list[Item]:
    """A manifest's videos (paths relative to it) and their labels where given (-1: none)."""
    items = []
    for where, rel, label in manifest_rows(path, label_required=False):
        try:
            lab = int(label) if label else -1
        except ValueError:
            raise AnnotationError(f"{where}: label {label!r} is not an integer") from None
        items.append(Item(path.parent / rel, lab if lab >= 0 else None))
    return items


def collect_inputs(inputs: Iterable[str | Path]) -> list[Item]:
    """Expand files, folders and manifests into the videos to classify (in a stable order)."""
    items: list[Item] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = folder_items(p)
            if not found:
                raise InputError(f"{p}: folder holds no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
            items += found
        elif p.suffix.lower() in MANIFEST_EXTENSIONS:
            items += _manifest(p)
        elif p.exists():
            items.append(Item(p))
        else:
            raise InputError(f"input not found: {p}")
    if not items:
        raise InputError("no videos to classify")
    return items
