"""The exact k-NN engine behind the prediction-depth probes (torch; GPU if available).

:func:`knn_predict` classifies by uniform majority vote of the ``k`` nearest training points,
found by :func:`knn_neighbours`: exact squared Euclidean distances with deterministic ties, yet
faster than faiss's exact search on the project's CPU (a group-minimum pre-selection, a cheap
GEMM with a proven error margin, and a float64 re-rank of the survivors).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from .config import native_bf16, resolve_device
from .metrics import ArrayLike, _as_int_labels, _check_num_classes


def knn_predict(train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, k: int = 30,
                num_classes: int | None = None, chunk_size: int | None = None,
                device: str | torch.device | None = None) -> np.ndarray:
    """Exact Euclidean k-NN majority-vote classifier over :func:`knn_neighbours` (a deterministic
    answer that does not depend on the device, the chunking or the BLAS). Votes are uniform; a
    tie between classes goes to the smallest class index (as in scikit-learn's).
    ``chunk_size`` test points are processed at a time (default 256 on CPU, 1024 on CUDA);
    ``device`` defaults to CUDA when available. Returns int64 numpy predictions of shape (n_test,).
    """
    dev = resolve_device(device)
    xtr = torch.as_tensor(train_x).to(device=dev, dtype=torch.float32)
    xte = torch.as_tensor(test_x).to(device=dev, dtype=torch.float32)
    y_np = _as_int_labels(train_y, "train_y", 1)
    if xtr.ndim != 2 or xte.ndim != 2:
        raise ValueError(
            f"train_x and test_x must be 2-D, got shapes {tuple(xtr.shape)} and {tuple(xte.shape)}"
        )
    n_train = xtr.shape[0]
    if y_np.shape[0] != n_train:
        raise ValueError(f"train_y has {y_np.shape[0]} labels but train_x has {n_train} rows")
    with torch.no_grad():
        nbr = knn_neighbours(xtr, xte, k, chunk_size)  # validates k, dims, chunk_size
        if xte.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        c = _check_num_classes(int(y_np.max()), num_classes, "train_y")
        labels = torch.as_tensor(y_np, device=dev)[nbr]  # (n_test, k)
        votes = torch.zeros(xte.shape[0], c, dtype=torch.int64, device=dev)
        votes.scatter_add_(1, labels, torch.ones_like(labels))
        return votes.argmax(dim=1).cpu().numpy()  # first maximum: the smallest class


#: Training points per group in the group-minimum pre-selection of :func:`knn_neighbours`.
KNN_GROUP = 32
#: How :func:`knn_neighbours` may compute its candidate values (see there).
KNN_GEMMS = ("float32", "bfloat16", "float64")
_BIG = 2.0**100  # the value of padding columns: exact in bfloat16, never near


def knn_neighbours(train_x: torch.Tensor, test_x: torch.Tensor, k: int, chunk_size: int | None = None,
                   gemm: str | None = None) -> torch.Tensor:
    """Indices (n_test, k) of the ``k`` nearest training points of every test point, each row in
    ascending index order. Both inputs: float32 tensors on one device.

    Exact: the k nearest by squared Euclidean distance of the float32 features computed in float64,
    equal distances going to the smaller training index, so the answer does not depend on the
    device, the chunking or the arithmetic used to find it.

    Fast: candidate values ``||b||^2 - 2 a.b`` (``||a||^2`` does not change a row's ranking) of
    the mean-centred features come from one GEMM per chunk of test rows, ``gemm``:

    * 'float32': NumPy's BLAS (measured about 2x torch's sgemm on the project's AMD CPU);
    * 'bfloat16': inputs rounded to bfloat16, products accumulated and returned in float32
      (oneDNN, about 2x 'float32' on CPUs with native bf16: avx512_bf16 or AMX). Every chunk
      carries a probe row whose exact float32 result proves the accumulation and output were float32
      (else the call falls back to 'float32' for good, with a warning);
    * 'float64': CUDA's default (TF32 and reduced-precision reductions cannot creep in).

    The default is 'float64' on CUDA, else 'bfloat16' where it is native, else 'float32'. The
    GEMM's error is bounded per test row (:func:`_knn_margin`), so every true neighbour lies within
    the margin of the computed k-th smallest value; only those few candidates are looked at again,
    with float32 and, where still too close to call, float64 distances. The candidates are found
    without a top-k over all ``n_train`` columns: the training points are split into groups of
    :data:`KNN_GROUP`, and the k-th smallest group minimum bounds the k-th smallest value from
    above. On CPU everything runs with ``torch.get_num_threads()`` threads (NumPy's BLAS is capped
    to match).
    """
    k, chunk_size, gemm = _knn_args(train_x, test_x, k, chunk_size, gemm)
    train_x, test_x = train_x.float(), test_x.float()  # the exact answer is the float32 features'
    (n, d), m, dev = train_x.shape, test_x.shape[0], train_x.device
    # centre on the training mean (distances do not change; the values the GEMM sees shrink)
    ct = torch.float64 if gemm == "float64" else torch.float32  # centring and accumulation
    mu = train_x.to(ct).mean(0)
    tc, qc = train_x.to(ct) - mu, test_x.to(ct) - mu
    b_norm, a_norm = _norms(tc), _norms(qc)  # float64 upper bounds
    for name, v in (("train_x", b_norm), ("test_x", a_norm)):
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} contains NaN or infinite values; k-NN needs finite features")
    if m == 0:
        return torch.zeros(0, k, dtype=torch.int64, device=dev)
    # G >= k groups of L points, then at least one filler group; padding columns are _BIG
    L = max(1, min(KNN_GROUP, n // k))
    G = -(-n // L)
    A, Bt, err = _operands(tc, qc, gemm, (G + 1) * L)
    margin = _knn_margin(gemm, d, a_norm, float(b_norm.max()), err).to(ct)[:, None]
    out = torch.empty(m, k, dtype=torch.int64, device=dev)
    chunks = _gemm_chunks(A, Bt, gemm, d, min(chunk_size, m))
    for s, buf in chunks:
        if buf is None:  # the bfloat16 probe failed: leave its context, redo in float32
            chunks.close()
            return knn_neighbours(train_x, test_x, k, chunk_size, "float32")
        b = buf.shape[0]
        out[s : s + b] = _knn_chunk(buf, margin[s : s + b], train_x, test_x[s : s + b], k, L, G, n)
    return out


def _knn_args(train_x: torch.Tensor, test_x: torch.Tensor, k: Any, chunk_size: Any,
              gemm: str | None) -> tuple[int, int, str]:
    """(k, chunk_size, gemm) of :func:`knn_neighbours` checked, with their defaults filled in."""
    if train_x.ndim != 2 or test_x.ndim != 2:
        raise ValueError(f"train_x and test_x must be 2-D, got shapes {tuple(train_x.shape)} and "
                         f"{tuple(test_x.shape)}")
    n, d = train_x.shape
    if test_x.shape[1] != d:
        raise ValueError(f"feature dims differ: train_x has {d}, test_x has {test_x.shape[1]}")
    if test_x.device != train_x.device:
        raise ValueError(f"train_x is on {train_x.device} but test_x on {test_x.device}; put both "
                         "on one device")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer with 1 <= k <= n_train={n}, got {k!r}")
    cuda = train_x.device.type == "cuda"
    if chunk_size is None:
        chunk_size = 1024 if cuda else 256
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if gemm is None:
        gemm = "float64" if cuda else ("bfloat16" if _bf16_gemm_native() else "float32")
    if gemm not in KNN_GEMMS:
        raise ValueError(f"unknown gemm {gemm!r}; allowed: {', '.join(map(repr, KNN_GEMMS))}")
    if cuda and gemm != "float64":
        raise ValueError(f"gemm={gemm!r} on CUDA: TF32 and reduced-precision reductions would void "
                         "the error bound; use 'float64' (the default there)")
    if gemm == "bfloat16" and (_BF16_FAILED or d > 1024):
        gemm = "float32"  # a probe failed before; or too many terms for the exact probe
    return int(k), int(chunk_size), gemm


def _operands(tc: torch.Tensor, qc: torch.Tensor, gemm: str, cols: int):
    """(A, Bt, bfloat16 error terms or None): the GEMM ``A @ Bt`` gives ``||b||^2 - 2 a.b`` per
    (test row, training column); padding columns hold _BIG."""
    (n, d), m, ct, dev = tc.shape, qc.shape[0], tc.dtype, tc.device
    sq = (tc * tc).sum(1)  # ||b||^2 in the accumulation type: error <= gamma_d ||b||^2
    if gemm == "bfloat16":
        # inputs rounded to bfloat16 here (so their rounding is known), ||b||^2 as two bfloat16
        # parts; columns [-2 b ; s_hi ; s_lo], rows [a, 1, 1]
        b_in, a_in = tc.bfloat16().float(), qc.bfloat16().float()
        s_hi = sq.bfloat16().float()
        s_parts = [s_hi, (sq - s_hi).bfloat16().float()]
        err = (float(_norms(tc - b_in).max()), _norms(qc - a_in), float(_norms(b_in).max()),
               float(sq.max()))
    else:
        b_in, a_in, s_parts, err = tc, qc, [sq], None
    Bt = torch.zeros(d + len(s_parts), cols, dtype=ct, device=dev)
    Bt[:d, :n] = -2.0 * b_in.T
    for i, part in enumerate(s_parts):
        Bt[d + i, :n] = part
    Bt[d, n:] = _BIG
    return torch.cat([a_in, torch.ones(m, len(s_parts), dtype=ct, device=dev)], 1), Bt, err


def _gemm_chunks(A: torch.Tensor, Bt: torch.Tensor, gemm: str, d: int, rows: int):
    """Yield (first row, ``A[rows] @ Bt``) chunk by chunk with ``gemm``'s arithmetic; (row, None)
    when a bfloat16 chunk's probe row shows the accumulation was not float32."""
    m, (K, cols) = A.shape[0], Bt.shape
    buf = torch.empty(rows + 1, cols, dtype=Bt.dtype, device=Bt.device)
    ctx: Any = contextlib.nullcontext()
    if gemm == "float32":
        A_np, Bt_np, buf_np = A.numpy(), Bt.numpy(), buf.numpy()
        ctx = _blas_threads(torch.get_num_threads())
    elif gemm == "bfloat16":
        # the probe: column cols-1 (padding: _BIG for real rows) against an extra row of A
        Bt[:d, -1] = 1 + 2.0**-6
        probe_row = torch.zeros(1, K)
        probe_row[0, :d] = 1 + 2.0**-7
        expect = d * (1 + 2.0**-7) * (1 + 2.0**-6)  # exact in float32 for d <= 1024
        A_p = torch.empty(rows + 1, K)
        ctx = _bf16_matmul()
    with ctx:
        for s in range(0, m, rows):
            b = min(rows, m - s)
            if gemm == "bfloat16":
                A_p[:b] = A[s : s + b]
                A_p[b] = probe_row
                torch.mm(A_p[: b + 1], Bt, out=buf[: b + 1])
                if float(buf[b, -1]) != expect:
                    _bf16_failed(float(buf[b, -1]), expect)
                    yield s, None
                    return
            elif gemm == "float32":
                np.matmul(A_np[s : s + b], Bt_np, out=buf_np[:b])
            else:
                torch.mm(A[s : s + b], Bt, out=buf[:b])
            yield s, buf[:b]


def _norms(x):
    """Upper bounds (float64) of the Euclidean norms of the rows of ``x``, computed in its own
    type (error <= gamma_{d+2}, covered by the factor)."""
    u = 2.0**-53 if x.dtype == torch.float64 else 2.0**-24
    return torch.linalg.vector_norm(x, dim=1).double() * (1 + 4 * (x.shape[1] + 2) * u)


def _knn_margin(gemm: str, d: int, a_norm, bmax: float, bf16_err: tuple | None):
    """Twice the largest error of the GEMM's ``||b||^2 - 2 a.b`` per test row (float64 tensor),
    for (centred) test rows of norm ``a_norm`` and training rows of norm at most ``bmax``.

    Terms: the rounding of the bfloat16 inputs (Cauchy-Schwarz on the actual rounding errors,
    ``bf16_err`` = (max training-row error norm, test-row error norms, max rounded training norm,
    max ||b||^2)) and of ``||b||^2``; the float32/float64 accumulation of the products
    (``gamma_K`` times their absolute sum); the centring; and the threshold arithmetic of
    :func:`_knn_chunk`.
    """
    u = 2.0**-53 if gemm == "float64" else 2.0**-24

    def gamma(j: int) -> float:
        return j * u / (1 - j * u)

    a = a_norm * (1 + 1e-9)
    b = bmax * (1 + 1e-9)
    if bf16_err is None:  # inputs exact; K = d + 1 terms
        S = 2 * a * b + (1 + gamma(d)) * b * b
        delta = gamma(d) * b * b + gamma(d + 1) * S
    else:  # K = d + 2 terms
        e_b, e_a, b_in, s_max = bf16_err
        a_in = a + e_a
        b_in = b_in * (1 + 1e-9)
        S = 2 * a_in * b_in + 1.01 * s_max
        delta = (2 * (a * e_b + e_a * b_in) * (1 + 1e-9)  # |a^.b^ - a.b| <= |a||b-b^| + |a-a^||b^|
                 + 2.0**-17 * s_max + gamma(d) * b * b  # ||b||^2: its two parts, its float32 sum
                 + gamma(d + 2) * S)
    delta = delta + 2.02 * u * (a + b) ** 2 + 2 * u * S  # centring, threshold arithmetic
    return 2.0 * delta * (1 + 1e-3) + 1e-30


_BF16_FAILED: list = []


def _bf16_gemm_native() -> bool:
    """bfloat16 GEMMs with float32 accumulation: where the CPU computes bf16 natively and torch
    lets oneDNN do it (``torch.backends.mkldnn.matmul.fp32_precision``)."""
    if _BF16_FAILED or not hasattr(getattr(torch.backends, "mkldnn", None), "matmul"):
        return False
    if not _BF16_NATIVE:
        _BF16_NATIVE.append(native_bf16("cpu"))
    return _BF16_NATIVE[0]


_BF16_NATIVE: list = []  # native_bf16('cpu'), read once per process


def _bf16_matmul():
    """Float32 matmuls computed by oneDNN from bfloat16 inputs, for the ``with`` block only."""

    @contextlib.contextmanager
    def ctx():
        mm = torch.backends.mkldnn.matmul
        old = mm.fp32_precision
        mm.fp32_precision = "bf16"
        try:
            yield
        finally:
            mm.fp32_precision = old

    return ctx()


def _bf16_failed(got: float, expect: float) -> None:
    _BF16_FAILED.append(True)
    warnings.warn(f"k-NN: the bfloat16 GEMM's probe gave {got!r} instead of {expect!r} (it does "
                  "not accumulate or return float32 here); using float32 GEMMs from now on",
                  RuntimeWarning, stacklevel=3)


def _knn_chunk(D, margin, train_x, test_x, k: int, L: int, G: int, n: int):
    """The k nearest (ascending index) of one chunk of test rows from its GEMM values ``D``
    (b, (G + 1) * L); ``margin`` (b, 1) is twice the rounding bound of each row."""
    b, dev = D.shape[0], D.device
    gmin = D.view(b, G + 1, L).amin(2)  # (b, G + 1)
    # the k-th smallest group minimum is >= the k-th smallest value: any true neighbour is
    # within the margin of it, so only groups whose minimum lies under ``thr`` can hold one
    thr = _kth_smallest(gmin[:, :G], k) + margin
    gi = _compact(gmin <= thr, fill=G)  # (b, groups): the group indices, then the filler group
    base = torch.arange(b, device=dev)[:, None] * (G + 1)
    cand = D.view(b * (G + 1), L).index_select(0, (base + gi).flatten()).view(b, -1)
    cols = (gi[:, :, None] * L + torch.arange(L, device=dev)).view(b, -1)
    pos = _compact(cand <= thr, fill=-1)  # (b, M), M >= k: the points under thr
    empty = pos < 0
    C = cols.gather(1, pos.clamp(min=0))
    empty |= C >= n
    V = cand.gather(1, pos.clamp(min=0)).masked_fill(empty, float("inf"))
    V, order = V.sort(1)
    C = C.masked_fill(empty, n).gather(1, order)
    # the k smallest values are the true neighbour set unless the next one is within the margin
    # of the k-th (or ties): those rows are looked at again
    top = C[:, :k].clone()
    nxt = V[:, k] if V.shape[1] > k else torch.full_like(V[:, 0], float("inf"))
    amb = (nxt - V[:, k - 1] <= margin[:, 0]).nonzero()[:, 0]
    if len(amb):
        near = V[amb] <= V[amb, k - 1 : k] + margin[amb]  # a prefix of every (sorted) row
        width = int(near.sum(1).max())
        top[amb] = _rerank(C[amb, :width].masked_fill(~near[:, :width], n), train_x, test_x[amb],
                           k, n)
    return top.sort(1).values


def _rerank(C, train_x, test_x, k: int, n: int):
    """The k nearest among candidate indices ``C`` (rows, M; ``n`` = none) by exact distance:
    float32 direct differences first (relative error at most ``gamma_{d+3}``), float64 for the
    rows where the k-th and (k+1)-th are still within that error of each other (or tie); equal
    float64 distances go to the lower index."""
    valid = C < n
    rows = train_x.index_select(0, C.clamp(max=n - 1).flatten()).view(*C.shape, -1)
    d = rows.shape[2]
    dist = (test_x[:, None, :] - rows).square_().sum(2).masked_fill_(~valid, float("inf"))
    dist, order = dist.sort(1)
    C = C.gather(1, order)
    top = C[:, :k].clone()
    u = 2.0**-24
    g = (d + 3) * u / (1 - (d + 3) * u)
    nxt = dist[:, k] if dist.shape[1] > k else torch.full_like(dist[:, 0], float("inf"))
    amb = ((nxt - dist[:, k - 1] <= 2.1 * g * nxt) & torch.isfinite(nxt)).nonzero()[:, 0]
    if len(amb):
        Ca = C[amb]
        exact = (test_x[amb, None, :].double()
                 - train_x.index_select(0, Ca.clamp(max=n - 1).flatten()).view(*Ca.shape, -1).double())
        exact = exact.square().sum(2).masked_fill(Ca >= n, float("inf"))
        Ca, perm = Ca.sort(1)
        ranked = exact.gather(1, perm).sort(dim=1, stable=True).indices[:, :k]
        top[amb] = Ca.gather(1, ranked)
    return top


def _kth_smallest(x, k: int):
    """(b, 1): the k-th smallest entry of every row (CPU: NumPy's introselect, ~10x torch.topk)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.partition(x.numpy(), k - 1, axis=1)[:, k - 1 : k])
    return x.topk(k, 1, largest=False, sorted=False).values.amax(1, keepdim=True)


def _compact(mask, fill: int):
    """(b, max count): the column indices of every row's True entries in order, ``fill`` after."""
    counts = mask.sum(1)
    r, c = mask.nonzero(as_tuple=True)  # row-major
    slot = torch.arange(len(r), device=mask.device) - (counts.cumsum(0) - counts)[r]
    out = torch.full((mask.shape[0], int(counts.max())), fill, dtype=torch.int64,
                     device=mask.device)
    out[r, slot] = c
    return out


_BLAS: list = []  # the process's threadpoolctl controller, found once (finding it takes ms)


def _blas_threads(n: int):
    """Cap NumPy's BLAS at ``n`` threads (torch's thread count) while the k-NN GEMM runs."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
            return contextlib.nullcontext()
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=n, user_api="blas")




def knn_predict_many(train_feats: Sequence[ArrayLike], train_y: ArrayLike, test_feats: Sequence[ArrayLike],
                     k: int = 30, **kwargs: Any) -> np.ndarray:
    """Run :func:`knn_predict` for each probe tap; returns int64 (taps, n_test).

    ``train_feats[t]`` / ``test_feats[t]`` are the features of tap ``t``;
    extra keyword arguments are forwarded to :func:`knn_predict`.
    """
    if len(train_feats) != len(test_feats):
        raise ValueError(
            f"got {len(train_feats)} train taps but {len(test_feats)} test taps"
        )
    preds = [
        knn_predict(tr, train_y, te, k=k, **kwargs) for tr, te in zip(train_feats, test_feats, strict=True)
    ]
    if not preds:
        return np.zeros((0, 0), dtype=np.int64)
    return np.stack(preds)
