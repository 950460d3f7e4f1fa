"""imgsearch.evaluate against hand-computed cases and scikit-learn."""
import numpy as np
import pytest

from imgsearch import evaluate as ev


def test_average_precision_hand_computed():
    # hits at ranks 1, 3, 6; 4 relevant items exist (one never retrieved)
    rel = [1, 0, 1, 0, 0, 1]
    assert ev.average_precision(rel, 4) == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 4)
    assert ev.average_precision(rel) == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert ev.average_precision([0, 0, 0], 0) == 0.0
    assert ev.average_precision([0, 0, 0], 2) == 0.0
    with pytest.raises(ValueError, match="smaller than"):
        ev.average_precision([1, 1], 1)


def test_average_precision_matches_sklearn_on_full_rankings(rng):
    metrics = pytest.importorskip("sklearn.metrics")
    for _ in range(20):
        y = rng.random(50) < 0.3
        if not y.any():
            continue
        score = rng.random(50)
        order = np.argsort(-score)
        ours = ev.average_precision(y[order], int(y.sum()))
        assert ours == pytest.approx(metrics.average_precision_score(y, score))


def test_precision_and_map():
    rel = np.array([[1, 1, 0, 0], [0, 1, 0, 1]], dtype=bool)
    assert ev.precision_at_k(rel, 2) == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert ev.precision_at_k(rel, 4) == pytest.approx(0.5)
    ap0 = (1 + 1) / 2
    ap1 = (1 / 2 + 2 / 4) / 2
    assert ev.mean_average_precision(rel) == pytest.approx((ap0 + ap1) / 2)
    with pytest.raises(ValueError, match="k > 0"):
        ev.precision_at_k(rel, 0)
    with pytest.raises(ValueError, match="only 4 columns"):
        ev.precision_at_k(rel, 5)


def test_recall_at_k_ignores_padding_and_order():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    I = np.array([[3, 9, 1], [6, 5, -1]])
    assert ev.recall_at_k(I, truth) == pytest.approx(4 / 6)
    assert ev.recall_at_k(I, truth, k=1) == pytest.approx(0 / 2)
    with pytest.raises(ValueError, match="queries"):
        ev.recall_at_k(I[:1], truth)


def test_label_retrieval_scores_leave_one_out():
    ids = np.array([10, 11, 12, 13])
    labels = ["a", "a", "b", "b"]
    # each query's own id comes first and must be skipped
    I = np.array([[10, 11, 12, 13], [11, 12, 10, 13], [12, 13, 10, 11], [13, 10, 11, 12]])
    res = ev.label_retrieval_scores(I, ids, labels, ks=(1, 2))
    # after dropping self: q10 [11,12,13] AP 1; q11 [12,10,13] AP 1/2; q12 [13,..] AP 1; q13 [10,11,12] AP 1/3
    assert res["mAP"] == pytest.approx((1 + 0.5 + 1 + 1 / 3) / 4)
    assert res["precision@1"] == pytest.approx(2 / 4)
    assert res["recall@2"] == pytest.approx((1 + 1 + 1 + 0) / 4)
