"""Exact k-NN (pcl.knn.knn_neighbours / knn_predict) against a float64 brute force.

The reference ranks every training point by its float64 squared distance, equal distances by index
(a stable sort), so it is the definition knn_neighbours promises, computed the slow obvious way.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pcl import knn as M

GEMMS_HERE = [g for g in M.KNN_GEMMS
              if g != "bfloat16" or hasattr(getattr(torch.backends, "mkldnn", None), "matmul")]


def brute(tr: torch.Tensor, te: torch.Tensor, k: int) -> torch.Tensor:
    d = ((te.double()[:, None, :] - tr.double()[None]) ** 2).sum(2)
    return d.sort(dim=1, stable=True).indices[:, :k].sort(1).values


def _cases():
    """(name, train, test, k): generic, exact ties, duplicates, a large offset, n < 2k, k = 1,
    a far query, points on a sphere (distances equal up to float32 rounding)."""
    g = torch.Generator().manual_seed(0)
    out = [("gaussian", torch.randn(700, 16, generator=g) * 30, torch.randn(90, 16, generator=g) * 30, 30)]
    ints = torch.randint(0, 3, (400, 3), generator=g).float()
    out.append(("integer ties", ints[:300], ints[300:], 5))
    dup = torch.randn(500, 12, generator=g)
    dup[250:350] = dup[:100]
    out.append(("duplicates", dup, torch.randn(40, 12, generator=g), 30))
    off = torch.randn(600, 8, generator=g) + 1000.0
    out.append(("offset 1000", off[:500], off[500:], 7))
    out.append(("n < 2k", torch.randn(40, 4, generator=g), torch.randn(20, 4, generator=g), 30))
    out.append(("k=1", torch.randn(300, 128, generator=g), torch.randn(30, 128, generator=g), 1))
    far = torch.randn(30, 8, generator=g) * 0.01
    far[:, 0] += 3e3
    out.append(("far query", torch.randn(1000, 8, generator=g), far, 10))
    u = torch.randn(1000, 8, generator=g)
    u = u / u.norm(dim=1, keepdim=True) * (10 + 1e-5 * torch.randn(1000, 1, generator=g))
    out.append(("sphere", u, torch.randn(30, 8, generator=g) * 1e-3, 10))
    return out


CASES = _cases()


@pytest.mark.parametrize("gemm", GEMMS_HERE)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_neighbours_equal_float64_brute_force(case, gemm):
    _, tr, te, k = case
    ref = brute(tr, te, k)
    for chunk in (None, 7):
        got = M.knn_neighbours(tr, te, k, chunk_size=chunk, gemm=gemm)
        assert got.dtype == torch.int64 and got.shape == (len(te), k)
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_the_margin_is_what_makes_bfloat16_exact(monkeypatch):
    """Without the rounding margin, the bfloat16 GEMM's own ranking picks wrong neighbours."""
    if "bfloat16" not in GEMMS_HERE:
        pytest.skip("torch without torch.backends.mkldnn.matmul")
    g = torch.Generator().manual_seed(0)
    tr = torch.randn(3000, 8, generator=g)
    te = torch.randn(40, 8, generator=g) * 0.01 + torch.tensor([3e3] + [0.0] * 7)
    k = 10
    ref = brute(tr, te, k)
    assert torch.equal(M.knn_neighbours(tr, te, k, gemm="bfloat16"), ref)
    margin = M._knn_margin
    monkeypatch.setattr(M, "_knn_margin", lambda *a: margin(*a) * 0)
    assert (M.knn_neighbours(tr, te, k, gemm="bfloat16") != ref).any()


def test_bfloat16_probe_falls_back_to_float32(monkeypatch):
    """A GEMM that rounds its output to bfloat16 fails the probe: warning, then float32 (exact)."""
    if "bfloat16" not in GEMMS_HERE:
        pytest.skip("torch without torch.backends.mkldnn.matmul")
    mm = torch.mm

    def rounding_mm(a, b, out=None):
        r = mm(a, b).bfloat16().float()
        return r if out is None else out.copy_(r)

    monkeypatch.setattr(torch, "mm", rounding_mm)
    monkeypatch.setattr(M, "_BF16_FAILED", [])
    _, tr, te, k = CASES[0]
    with pytest.warns(RuntimeWarning, match="probe"):
        got = M.knn_neighbours(tr, te, k, gemm="bfloat16")
    assert torch.equal(got, brute(tr, te, k))
    assert M._BF16_FAILED and not M._bf16_gemm_native()


def test_predict_votes_ties_to_smaller_class():
    # test 0 has neighbours of classes 2 and 0 (one vote each) -> 0
    got = M.knn_predict(np.array([[0.0], [1.0], [5.0]]), np.array([2, 0, 1]), np.array([[0.4]]),
                        k=2, device="cpu")
    assert got.tolist() == [0]


def test_bad_input_is_refused():
    tr = torch.randn(20, 4)
    with pytest.raises(ValueError, match="finite"):
        M.knn_neighbours(torch.cat([tr, torch.full((1, 4), float("nan"))]), tr, 3)
    with pytest.raises(ValueError, match="gemm"):
        M.knn_neighbours(tr, tr, 3, gemm="float16")
    with pytest.raises(ValueError, match="chunk_size"):
        M.knn_neighbours(tr, tr, 3, chunk_size=0)
    with pytest.raises(ValueError, match="k must"):
        M.knn_neighbours(tr, tr, 21)
    with pytest.raises(ValueError, match="one device"):
        M.knn_neighbours(tr, tr.to("meta"), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.knn_neighbours(tr, tr[:0], 3).shape == (0, 3)
