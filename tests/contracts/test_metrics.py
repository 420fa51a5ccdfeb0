import numpy as np
import pytest

from jedi_deploy.contracts.metrics import (
    average_precision,
    classification_metrics,
    mean_average_precision,
    topk_accuracy,
)


def test_topk_accuracy_by_hand():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, labels, 5) == 1.0  # k clipped to the class count


def test_average_precision_by_hand():
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))


def test_map_skips_absent_classes_and_metrics_skip_unlabeled():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    labels = np.array([0, 1, 0])
    assert mean_average_precision(scores, labels) == pytest.approx(1.0)
    m = classification_metrics(np.vstack([scores, [[0, 0, 1.0]]]), np.append(labels, -1))
    assert m == {"acc1": 100.0, "acc5": 100.0, "mAP": 100.0}


def test_one_ranking_rule_breaks_ties_toward_the_lower_class():
    from jedi_deploy.contracts.metrics import label_ranks, top_classes, topk_accuracy

    scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    assert label_ranks(scores, [1, 2, 2]).tolist() == [2, 2, 3]
    assert label_ranks(scores, [0, 1, 0]).tolist() == [1, 1, 1]
    assert [top_classes(s, 1)[0] for s in scores] == [int(s.argmax()) for s in scores] == [0, 1, 0]
    assert top_classes(scores[2], 3).tolist() == [0, 1, 2]
    assert topk_accuracy(scores, np.array([1, 2, 2]), 1) == 0.0
    assert topk_accuracy(scores, np.array([1, 2, 2]), 2) == pytest.approx(2 / 3)
    for s, y in zip(scores, [1, 2, 2]):  # a label's rank is its position in the top-k list, 1-based
        assert list(top_classes(s, 3)).index(y) + 1 == label_ranks(s[None], [y])[0]
