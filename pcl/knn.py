"""The exact k-NN engine behind the prediction-depth probes (torch; GPU if available): exact
neighbours with deterministic ties, yet faster than faiss's exact search on the project's CPU
(README.md, "Speed")."""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from .config import native_bf16, resolve_device
from .metrics import ArrayLike, _as_int_labels, _check_num_classes


def knn_predict(train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, k: int = 30,
                num_classes: int | None = None, chunk_size: int | None = None,
                device: str | torch.device | None = None) -> np.ndarray:
    """int64 (n_test,): uniform majority vote of the exact :func:`knn_neighbours`, a tie going to
    the smallest class (as in scikit-learn), so the answer does not depend on the device, the
    chunking or the BLAS. ``chunk_size``: test rows at a time (default 256 on CPU, 1024 on CUDA);
    ``device``: default CUDA when available."""
    dev = resolve_device(device)
    xtr, xte = (torch.as_tensor(x).to(device=dev, dtype=torch.float32) for x in (train_x, test_x))
    y_np = _as_int_labels(train_y, "train_y", 1)
    if xtr.ndim != 2 or xte.ndim != 2:
        raise ValueError(f"train_x and test_x must be 2-D, got shapes {tuple(xtr.shape)} and "
                         f"{tuple(xte.shape)}")
    if y_np.shape[0] != xtr.shape[0]:
        raise ValueError(f"train_y has {y_np.shape[0]} labels but train_x has {xtr.shape[0]} rows")
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
    ascending index order; both inputs float32 tensors on one device. Exact: by float64 squared
    Euclidean distance of the float32 features, equal distances to the smaller training index,
    whatever the device, chunking or arithmetic.

    Fast: candidate values ``||b||^2 - 2 a.b`` (``||a||^2`` does not change a row's ranking) of
    the mean-centred features come from one GEMM per chunk of test rows, ``gemm``:

    * 'float32': NumPy's BLAS (measured about 2x torch's sgemm on the project's AMD CPU);
    * 'bfloat16': bfloat16 inputs, float32 accumulation and output (oneDNN, about 2x 'float32' on
      CPUs with native bf16), proven by a probe row with an exact float32 result in every chunk
      (else a warning, and 'float32' for good);
    * 'float64': CUDA's default (TF32 and reduced-precision reductions cannot creep in).

    Default: 'float64' on CUDA, else 'bfloat16' where native, else 'float32'. Only the candidates
    within the GEMM's error bound (:func:`_knn_margin`) of the computed k-th smallest value are
    looked at again, in float32 and, where still too close to call, float64. No top-k over all
    columns: the k-th smallest minimum of groups of :data:`KNN_GROUP` training points bounds the
    k-th smallest value from above. CPU threads: ``torch.get_num_threads()`` (BLAS capped to match).
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
        err = (float(_norms(tc - b_in).max()), _norms(qc - a_in), float(_norms(b_in).max()), float(sq.max()))
    else:
        b_in, a_in, s_parts, err = tc, qc, [sq], None
    Bt = torch.zeros(d + len(s_parts), cols, dtype=ct, device=dev)
    Bt[:d, :n] = -2.0 * b_in.T
    Bt[d:, :n] = torch.stack(s_parts)
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
        blas = _blas_controller()  # NumPy's BLAS capped at torch's thread count while it runs
        ctx = blas.limit(limits=torch.get_num_threads(), user_api="blas") if blas else ctx
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
                    _BF16_FAILED.append(True)
                    warnings.warn(f"k-NN: the bfloat16 GEMM's probe gave {float(buf[b, -1])!r} instead of "
                                  f"{expect!r} (it does not accumulate or return float32 here); using "
                                  "float32 GEMMs from now on", RuntimeWarning, stacklevel=2)
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
    for (centred) test rows of norm ``a_norm`` and training rows of norm at most ``bmax``. Terms:
    the rounding of the bfloat16 inputs (Cauchy-Schwarz on the actual rounding errors, ``bf16_err``
    = (max training-row error norm, test-row error norms, max rounded training norm, max ||b||^2))
    and of ``||b||^2``; the float32/float64 accumulation of the products (``gamma_K`` times their
    absolute sum); the centring; and the threshold arithmetic of :func:`_knn_chunk`.
    """
    u = 2.0**-53 if gemm == "float64" else 2.0**-24

    def gamma(j: int) -> float:
        return j * u / (1 - j * u)

    a, b = a_norm * (1 + 1e-9), bmax * (1 + 1e-9)
    if bf16_err is None:  # inputs exact; K = d + 1 terms
        S = 2 * a * b + (1 + gamma(d)) * b * b
        delta = gamma(d) * b * b + gamma(d + 1) * S
    else:  # K = d + 2 terms
        e_b, e_a, b_in, s_max = bf16_err
        a_in, b_in = a + e_a, b_in * (1 + 1e-9)
        S = 2 * a_in * b_in + 1.01 * s_max
        delta = (2 * (a * e_b + e_a * b_in) * (1 + 1e-9)  # |a^.b^ - a.b| <= |a||b-b^| + |a-a^||b^|
                 + 2.0**-17 * s_max + gamma(d) * b * b  # ||b||^2: its two parts, its float32 sum
                 + gamma(d + 2) * S)
    delta = delta + 2.02 * u * (a + b) ** 2 + 2 * u * S  # centring, threshold arithmetic
    return 2.0 * delta * (1 + 1e-3) + 1e-30


_BF16_FAILED: list = []
_native_bf16 = functools.cache(native_bf16)  # it reads /proc/cpuinfo: once per process


def _bf16_gemm_native() -> bool:
    """bfloat16 GEMMs with float32 accumulation: where the CPU computes bf16 natively and torch
    lets oneDNN do it (``torch.backends.mkldnn.matmul.fp32_precision``)."""
    return (not _BF16_FAILED and hasattr(getattr(torch.backends, "mkldnn", None), "matmul")
            and _native_bf16("cpu"))


@contextlib.contextmanager
def _bf16_matmul():
    """Float32 matmuls computed by oneDNN from bfloat16 inputs, for the ``with`` block only."""
    mm = torch.backends.mkldnn.matmul
    old = mm.fp32_precision
    mm.fp32_precision = "bf16"
    try:
        yield
    finally:
        mm.fp32_precision = old


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
    C = cols.gather(1, pos.clamp(min=0))
    empty = (pos < 0) | (C >= n)
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
        top[amb] = _rerank(C[amb, :width].masked_fill(~near[:, :width], n), train_x, test_x[amb], k, n)
    return top.sort(1).values


def _rerank(C, train_x, test_x, k: int, n: int):
    """The k nearest among candidate indices ``C`` (rows, M; ``n`` = none) by exact distance:
    float32 direct differences first (relative error at most ``gamma_{d+3}``), float64 for the
    rows where the k-th and (k+1)-th are still within that error of each other (or tie); equal
    float64 distances go to the lower index."""
    rows = train_x.index_select(0, C.clamp(max=n - 1).flatten()).view(*C.shape, -1)
    d = rows.shape[2]
    dist = (test_x[:, None, :] - rows).square_().sum(2).masked_fill_(C >= n, float("inf"))
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
    out = torch.full((mask.shape[0], int(counts.max())), fill, dtype=torch.int64, device=mask.device)
    out[r, slot] = c
    return out


@functools.cache
def _blas_controller():
    """The process's threadpoolctl controller, found once (finding it takes ms); None without it."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
        return None
    return ThreadpoolController()


def knn_predict_many(train_feats: Sequence[ArrayLike], train_y: ArrayLike, test_feats: Sequence[ArrayLike],
                     k: int = 30, **kwargs: Any) -> np.ndarray:
    """int64 (taps, n_test): :func:`knn_predict` (``kwargs`` passed on) of every probe tap ``t``,
    from the features ``train_feats[t]`` and ``test_feats[t]``."""
    if len(train_feats) != len(test_feats):
        raise ValueError(f"got {len(train_feats)} train taps but {len(test_feats)} test taps")
    preds = [knn_predict(tr, train_y, te, k=k, **kwargs)
             for tr, te in zip(train_feats, test_feats, strict=True)]
    return np.stack(preds) if preds else np.zeros((0, 0), dtype=np.int64)
