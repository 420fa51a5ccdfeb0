"""Linear CKA (Kornblith et al., 2019) between experts' cached embeddings, and between the
JEDI students' adjusted embeddings, on the same samples (the representation analysis of the
video KD benchmark paper).

    CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F · ||Yc^T Yc||_F),   Xc = X - mean(X)

It is 1 for identical representations, invariant to orthogonal transforms and isotropic
scaling, and needs no equal widths.
"""
from __future__ import annotations

from pathlib import Path

import torch

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.train.cached import Cache


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    if x.shape[0] != y.shape[0]:
        raise InputError(f"CKA needs the same samples: {x.shape[0]} vs {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise InputError("CKA needs at least two samples")
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    hsic = (y.T @ x).pow(2).sum()
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(hsic / norm) if norm > 0 else 0.0


def cka_matrix(features: dict[str, torch.Tensor]) -> tuple[list[str], list[list[float]]]:
    names = list(features)
    m = [[1.0] * len(names) for _ in names]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            m[i][j] = m[j][i] = linear_cka(features[names[i]], features[names[j]])
    return names, m


@torch.no_grad()
def collect_features(cache: Cache, split: str, bundle: str | Path | None = None,
                     max_samples: int | None = None, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every expert's embeddings over all datasets' ``split`` samples (same rows for all), plus
    ``<expert> (adjusted)`` from a JEDI bundle's adjustment modules (run on ``device``)."""
    datasets = sorted(d for d in cache.splits if split in cache.splits[d])
    if not datasets:
        raise InputError(f"the cache has no {split!r} split")
    names = cache.expert_names
    feats = {n: torch.cat([cache.split(d, split).emb[n] for d in datasets]) for n in names}
    if max_samples and len(feats[names[0]]) > max_samples:
        idx = torch.randperm(len(feats[names[0]]), generator=torch.Generator().manual_seed(0))[:max_samples]
        feats = {n: f[idx] for n, f in feats.items()}
    if bundle is not None:
        from jedi_deploy.models.bundle import load_bundle

        from .evaluate import check_bundle_matches_cache

        model, meta = load_bundle(bundle)
        check_bundle_matches_cache(meta.experts, cache)
        from jedi_deploy.models.devices import resolve_device

        dev = resolve_device(device)
        model.to(dev)
        with torch.no_grad():
            for j, e in enumerate(meta.experts):
                feats[f"{e.name} (adjusted)"] = model.adjust[j](feats[e.name].to(dev)).cpu()
    return feats


def write_cka_report(names: list[str], m: list[list[float]], out_dir: str | Path, title: str) -> dict[str, Path]:
    """``cka.md`` (table), ``cka.json`` and ``cka.png`` (heatmap) in ``out_dir``."""
    from jedi_deploy.common.plots import pyplot, save_figure
    from jedi_deploy.contracts.header import atomic_path, write_json

    plt = pyplot()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {a} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for a, row in zip(names, m)]
    md = out / "cka.md"
    with atomic_path(md, ".md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json(out / "cka.json", {"names": names, "cka": m})
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(names), 1.0 + 0.8 * len(names)))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
    fig.colorbar(im, ax=ax, label="linear CKA")
    ax.set_title(title)
    fig.tight_layout()
    png = save_figure(fig, out / "cka.png", dpi=120)
    return {"table": md, "json": out / "cka.json", "heatmap": png}
