"""Tests for pcl.metrics against independent references.

References are hand-worked tiny examples, brute-force Python loops or
scikit-learn / closed-form approximations.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
import pytest

from pcl import knn
from pcl import metrics as M


# --------------------------------------------------------------------------
# modal labels / PIEs
# --------------------------------------------------------------------------
def test_modal_labels_hand_example_with_ties():
    # 4 models x 4 images
    preds = np.array(
        [
            [0, 2, 1, 4],
            [1, 2, 1, 4],
            [1, 0, 3, 4],
            [0, 0, 3, 2],
        ]
    )
    # img0: {0:2, 1:2} tie -> 0
    # img1: {2:2, 0:2} tie -> 0 (smallest, although 2 is seen first)
    # img2: {1:2, 3:2} tie -> 1
    # img3: {4:3, 2:1}     -> 4
    np.testing.assert_array_equal(M.modal_labels(preds), [0, 0, 1, 4])
    # explicit num_classes larger than needed does not change anything
    np.testing.assert_array_equal(M.modal_labels(preds, num_classes=10), [0, 0, 1, 4])
    with pytest.raises(ValueError):
        M.modal_labels(preds, num_classes=3)  # label 4 out of range


def test_modal_labels_matches_counter_loop():
    rng = np.random.default_rng(1)
    preds = rng.integers(0, 5, size=(7, 300))
    expected = []
    for i in range(preds.shape[1]):
        cnt = Counter(preds[:, i].tolist())
        best = max(cnt.values())
        expected.append(min(c for c, v in cnt.items() if v == best))
    np.testing.assert_array_equal(M.modal_labels(preds), expected)


def _pie_example():
    dense = np.array(
        [
            [0, 1, 2, 5, 0, 9],
            [0, 1, 3, 5, 1, 8],
            [1, 1, 4, 3, 1, 8],
        ]
    )
    pruned = np.array(
        [
            [0, 1, 4, 3, 1, 8],
            [1, 1, 3, 3, 1, 9],
            [1, 2, 2, 5, 0, 9],
        ]
    )
    # image: dense mode | pruned mode | PIE?
    # 0:  {0,0,1} -> 0 | {0,1,1} -> 1      | yes
    # 1:  {1,1,1} -> 1 | {1,1,2} -> 1      | no
    # 2:  {2,3,4} tie -> 2 | {4,3,2} tie -> 2 | no
    # 3:  {5,5,3} -> 5 | {3,3,5} -> 3      | yes
    # 4:  {0,1,1} -> 1 | {1,1,0} -> 1      | no
    # 5:  {9,8,8} -> 8 | {8,9,9} -> 9      | yes
    # => 3 PIEs: images 0, 3, 5
    return dense, pruned, np.array([True, False, False, True, False, True])


def test_pie_mask_hand_example():
    dense, pruned, expected = _pie_example()
    mask = M.pie_mask(dense, pruned)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == 3


def test_pie_mask_different_population_sizes():
    dense, _, _ = _pie_example()  # dense modes: [0, 1, 2, 5, 1, 8]
    pruned = np.array(
        [
            [0, 2, 2, 5, 7, 8],
            [0, 2, 3, 5, 7, 8],
            [1, 2, 3, 4, 1, 0],
            [1, 1, 3, 4, 1, 0],
            [1, 1, 2, 4, 1, 0],
        ]
    )
    # pruned modes: img0 {0:2,1:3} -> 1 ; img1 {2:3,1:2} -> 2 ; img2 {2:2,3:3} -> 3
    #               img3 {5:2,4:3} -> 4 ; img4 {7:2,1:3} -> 1 ; img5 {8:2,0:3} -> 0
    # vs dense [0,1,2,5,1,8] -> differ at 0,1,2,3,5
    np.testing.assert_array_equal(
        M.pie_mask(dense, pruned), [True, True, True, True, False, True]
    )
    # one-model population is allowed too
    np.testing.assert_array_equal(M.pie_mask(dense, dense[:1]), [False, False, False, False, True, True])


def test_pie_mask_mismatched_images_raises():
    dense, pruned, _ = _pie_example()
    with pytest.raises(ValueError, match="same images"):
        M.pie_mask(dense, pruned[:, :5])


def test_pie_mask_accepts_torch():
    torch = pytest.importorskip("torch")
    dense, pruned, expected = _pie_example()
    np.testing.assert_array_equal(M.pie_mask(torch.tensor(dense), torch.tensor(pruned)), expected)


# --------------------------------------------------------------------------
# overlaps / per-class counts
# --------------------------------------------------------------------------
def test_pie_overlap_hand_sets():
    a = np.zeros(10, bool)
    b = np.zeros(10, bool)
    a[[0, 1, 2, 3]] = True
    b[[2, 3, 4]] = True
    out = M.pie_overlap(a, b)
    # A={0,1,2,3}, B={2,3,4}: A&B={2,3}, A|B={0..4}
    assert out == {"intersection": 2, "union": 5, "jaccard": pytest.approx(0.4), "only_a": 2, "only_b": 1}
    assert isinstance(out["intersection"], int) and isinstance(out["jaccard"], float)
    empty = M.pie_overlap(np.zeros(5, bool), np.zeros(5, bool))
    assert empty["union"] == 0 and empty["jaccard"] == 0.0
    with pytest.raises(ValueError):
        M.pie_overlap(a, b[:9])


def test_per_class_counts_vs_loop():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, size=500)
    mask = rng.random(500) < 0.3
    expected = [0] * 10
    for m, y in zip(mask, labels, strict=True):
        if m:
            expected[y] += 1
    out = M.per_class_counts(mask, labels, num_classes=10)
    np.testing.assert_array_equal(out, expected)
    assert out.shape == (10,)
    # classes absent from the data still appear with zero count
    np.testing.assert_array_equal(M.per_class_counts([True, True], [1, 1], num_classes=4), [0, 2, 0, 0])


def test_common_unique_small_example():
    labels = np.array([0, 0, 1, 1, 2, 2, 0])
    a = np.array([1, 1, 1, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 1, 1, 0, 0, 1], bool)
    # class 0: images 0,1,6 -> common {0}, only_a {1}, only_b {6}
    # class 1: images 2,3   -> common {2}, only_b {3}
    # class 2: images 4,5   -> only_a {5}
    df = M.common_unique(a, b, labels, num_classes=3)
    assert list(df.columns) == ["class", "kind", "count"]
    assert len(df) == 9
    got = {(int(r["class"]), r["kind"]): int(r["count"]) for _, r in df.iterrows()}
    assert got == {
        (0, "common"): 1, (0, "only_a"): 1, (0, "only_b"): 1,
        (1, "common"): 1, (1, "only_a"): 0, (1, "only_b"): 1,
        (2, "common"): 0, (2, "only_a"): 1, (2, "only_b"): 0,
    }


# --------------------------------------------------------------------------
# Q-score
# --------------------------------------------------------------------------
def _q_brute(row):
    n = len(row)
    norm = math.sqrt(sum(v * v for v in row))
    z = [v / norm for v in row]
    mean = sum(z) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in z) / n)
    l1 = sum(abs(v) for v in z)
    return ((max(z) - mean) / std) / l1


def test_q_score_vs_brute_force():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(40, 12)).astype(np.float32)
    feats[::3] = np.abs(feats[::3])  # some all-positive (post-ReLU-like) rows
    expected = [_q_brute([float(v) for v in row]) for row in feats]
    q = M.q_score(feats)
    assert q.dtype == np.float64 and q.shape == (40,)
    np.testing.assert_allclose(q, expected, rtol=1e-10)


def test_q_score_scale_invariance():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(5, 8))
    scaled = feats.copy()
    scaled[2] *= 3.7
    np.testing.assert_allclose(M.q_score(scaled), M.q_score(feats), rtol=1e-12)


def test_q_score_degenerate_rows_nan_with_warning():
    feats = np.array(
        [
            [1.0, 2.0, 3.0, 4.0, 5.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],  # zero norm
            [0.1, 0.1, 0.1, 0.1, 0.1],  # constant: std is 0, though float rounding gives ~5e-17
            [3.0, -1.0, 0.5, 2.0, -2.0],
        ]
    )
    with pytest.warns(RuntimeWarning, match="2 of 4 rows") as rec:
        q = M.q_score(feats)
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert np.isnan(q[1]) and np.isnan(q[2])
    assert not np.isinf(q).any()
    np.testing.assert_allclose(q[[0, 3]], [_q_brute(feats[0].tolist()), _q_brute(feats[3].tolist())])


def test_q_score_no_warning_on_clean_input():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.q_score(np.array([[1.0, 0.0], [0.0, 2.0]]))


# --------------------------------------------------------------------------
# k-NN
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def knn_data():
    rng = np.random.default_rng(5)
    train_x = rng.normal(size=(2000, 16))
    train_y = rng.integers(0, 10, size=2000)
    test_x = rng.normal(size=(300, 16))
    return train_x, train_y, test_x


@pytest.mark.parametrize("k", [1, 5, 30])
def test_knn_matches_sklearn(knn_data, k):
    from sklearn.neighbors import KNeighborsClassifier

    train_x, train_y, test_x = knn_data
    ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(train_x, train_y).predict(test_x)
    got = knn.knn_predict(train_x, train_y, test_x, k=k, device="cpu")
    assert got.shape == (300,)
    np.testing.assert_array_equal(got, ref)
    # small chunks (not dividing n_test) give the same answer
    np.testing.assert_array_equal(
        knn.knn_predict(train_x, train_y, test_x, k=k, chunk_size=37, device="cpu"), ref
    )


def test_knn_vote_tie_goes_to_smaller_class():
    train_x = np.array([[0.0], [1.0], [5.0]])
    train_y = np.array([2, 0, 1])
    test_x = np.array([[0.4], [4.0]])
    # test 0.4: neighbours 0.0 (class 2, nearest) and 1.0 (class 0) -> tie -> 0
    # test 4.0: neighbours 5.0 (class 1) and 1.0 (class 0) -> tie -> 0
    np.testing.assert_array_equal(knn.knn_predict(train_x, train_y, test_x, k=2, device="cpu"), [0, 0])
    # k=1: plain nearest neighbour
    np.testing.assert_array_equal(knn.knn_predict(train_x, train_y, test_x, k=1, device="cpu"), [2, 1])


def test_knn_validation_and_torch_input():
    torch = pytest.importorskip("torch")
    train_x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    train_y = torch.arange(20) % 3
    with pytest.raises(ValueError, match="k must"):
        knn.knn_predict(train_x, train_y, train_x, k=21, device="cpu")
    with pytest.raises(ValueError, match="k must"):
        knn.knn_predict(train_x, train_y, train_x, k=0, device="cpu")
    # each training point is its own nearest neighbour
    np.testing.assert_array_equal(knn.knn_predict(train_x, train_y, train_x, k=1, device="cpu"),
                                  train_y.numpy())


def test_knn_predict_many(knn_data):
    train_x, train_y, test_x = knn_data
    taps_tr = [train_x[:, :8], train_x]
    taps_te = [test_x[:, :8], test_x]
    out = knn.knn_predict_many(taps_tr, train_y, taps_te, k=5, device="cpu")
    assert out.shape == (2, 300)
    for t in range(2):
        np.testing.assert_array_equal(
            out[t], knn.knn_predict(taps_tr[t], train_y, taps_te[t], k=5, device="cpu"))
    with pytest.raises(ValueError):
        knn.knn_predict_many(taps_tr, train_y, taps_te[:1], k=5)


# --------------------------------------------------------------------------
# prediction depth
# --------------------------------------------------------------------------
def _depth_brute(probe, final):
    taps, n = probe.shape
    out = []
    for i in range(n):
        for d in range(taps + 1):
            if all(probe[j, i] == final[i] for j in range(d, taps)):
                out.append(d)
                break
    return np.array(out)


def test_prediction_depth_hand_example():
    final = np.array([0, 0, 0, 0, 0, 7])
    probe = np.array(
        [  # 4 taps (rows) x 6 images (columns)
            [0, 1, 0, 0, 1, 7],
            [0, 1, 0, 1, 0, 7],
            [0, 1, 0, 0, 0, 3],
            [0, 0, 1, 0, 0, 7],
        ]
    )
    expected = [
        0,  # agrees at every tap
        3,  # agrees only at the last tap -> taps - 1
        4,  # disagrees at the last tap -> taps
        2,  # agrees, disagrees at tap 1, agrees after -> 2
        1,  # disagrees only at tap 0
        3,  # last disagreement at tap 2
    ]
    np.testing.assert_array_equal(M.prediction_depth(probe, final), expected)


def test_prediction_depth_vs_brute_force():
    rng = np.random.default_rng(6)
    probe = rng.integers(0, 3, size=(6, 400))
    final = rng.integers(0, 3, size=400)
    np.testing.assert_array_equal(M.prediction_depth(probe, final), _depth_brute(probe, final))


def test_prediction_depth_label_variant():
    probe = np.array([[1, 2], [1, 2], [1, 2]])
    final = np.array([1, 2])
    labels = np.array([0, 2])
    np.testing.assert_array_equal(M.prediction_depth(probe, final), [0, 0])
    # against labels, image 0 is never right -> depth = taps = 3
    np.testing.assert_array_equal(M.prediction_depth(probe, labels), [3, 0])
    np.testing.assert_array_equal(M.prediction_depth(probe, labels), _depth_brute(probe, labels))
    with pytest.raises(ValueError):
        M.prediction_depth(probe, final[:1])


# --------------------------------------------------------------------------
# UMAP
# --------------------------------------------------------------------------
def test_umap_embedding_shape_and_determinism():
    pytest.importorskip("umap")
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(0, 1, size=(100, 10)), rng.normal(20, 1, size=(100, 10))])
    e1 = M.umap_embedding(x, random_state=0)
    e2 = M.umap_embedding(x, random_state=0)
    assert e1.shape == (200, 2) and np.isfinite(e1).all()
    np.testing.assert_array_equal(e1, e2)
    # two far-apart clusters stay apart: centroid gap exceeds within-cluster spread
    c0, c1 = e1[:100].mean(0), e1[100:].mean(0)
    spread = max(e1[:100].std(0).max(), e1[100:].std(0).max())
    assert np.linalg.norm(c0 - c1) > 3 * spread


def test_vote_counts_and_ties_against_per_image_bincount():
    p = np.random.default_rng(3).integers(0, 5, (6, 400))
    ref = np.stack([np.bincount(p[:, i], minlength=7) for i in range(p.shape[1])])
    np.testing.assert_array_equal(M.vote_counts(p, 7), ref)
    top = ref.max(1)
    np.testing.assert_array_equal(M.tied_votes(p, 7), (ref == top[:, None]).sum(1) > 1)
    np.testing.assert_array_equal(M.modal_labels(p, 7), ref.argmax(1))
    with pytest.raises(ValueError, match="num_classes"):
        M.vote_counts(p, 3)
