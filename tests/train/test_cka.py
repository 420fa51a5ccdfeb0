"""Linear CKA: known values and invariances, then the report on a real cache."""
import pytest
import torch

from jedi_deploy.train.cka import (
    cka_matrix,
    collect_features,
    linear_cka,
    write_cka_report,
)


def test_linear_cka_matches_its_definition_and_invariances():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g), torch.randn(50, 4, generator=g)
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    assert linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0)  # orthogonal, scale, shift
    # Kernel form: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with centred Gram matrices.
    h = torch.eye(50, dtype=torch.float64) - 1 / 50
    k, l_ = h @ (x.double() @ x.double().T) @ h, h @ (y.double() @ y.double().T) @ h
    want = (k * l_).sum() / torch.sqrt((k * k).sum() * (l_ * l_).sum())
    assert linear_cka(x, y) == pytest.approx(want.item(), rel=1e-9)
    assert linear_cka(x, y) < 0.5  # independent noise
    names, m = cka_matrix({"a": x, "b": y, "c": x[:, :3]})
    assert names == ["a", "b", "c"] and m[0][1] == m[1][0] and all(m[i][i] == 1 for i in range(3))


def test_cka_report_on_the_cache_with_adjusted_students(cache, bundle_path, tmp_path):
    feats = collect_features(cache, "test", bundle_path)
    n = sum(len(cache.split(d, "test")) for d in cache.splits)
    assert all(f.shape[0] == n for f in feats.values())
    assert len(feats) == 2 * len(cache.experts)
    names, m = cka_matrix(feats)
    paths = write_cka_report(names, m, tmp_path, "CKA")
    assert paths["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = paths["table"].read_text()
    assert all(name in table for name in names) and table.count("\n") == 4 + len(names)
    # a student's adjusted embedding stays close to its expert's (small residual)
    i, j = names.index(cache.experts[0].name), names.index(f"{cache.experts[0].name} (adjusted)")
    assert m[i][j] > 0.5
