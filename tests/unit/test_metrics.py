import numpy as np

from tfospipe import metrics


def onehot(classes, n=10):
    p = np.full((len(classes), n), 0.0)
    p[np.arange(len(classes)), classes] = 1.0
    return p


def test_confusion_accuracy_precision_recall():
    acc = metrics.empty()
    labels = [0, 0, 1, 1, 2]
    predicted = [0, 1, 1, 1, 0]
    metrics.update(acc, labels, onehot(predicted) * 0.91 + 0.009)
    s = metrics.summarize(acc)
    assert s["examples"] == 5
    assert s["accuracy"] == 3 / 5
    assert s["confusion_matrix"][0][:3] == [1, 1, 0]
    assert s["confusion_matrix"][2][:3] == [1, 0, 0]
    assert s["per_class"]["1"]["precision"] == round(2 / 3, 4)
    assert s["per_class"]["1"]["recall"] == 1.0
    assert s["per_class"]["2"]["f1"] == 0.0
    assert s["bad_outputs"] == 0


def test_loss_is_mean_negative_log_probability_of_the_label():
    acc = metrics.empty()
    p = np.full((2, 10), 0.05)
    p[0, 3] = 0.55
    p[1, 4] = 0.55
    metrics.update(acc, [3, 5], p)
    assert np.isclose(metrics.summarize(acc)["loss"], (-np.log(0.55) - np.log(0.05)) / 2)


def test_merge_adds_partitions_and_bad_outputs_are_counted():
    a, b = metrics.empty(), metrics.empty()
    metrics.update(a, [1], onehot([1]))
    bad = onehot([2])
    bad[0, 0] = np.nan
    metrics.update(b, [2], bad)
    s = metrics.summarize(metrics.merge(a, b))
    assert s["examples"] == 2 and s["bad_outputs"] == 1


def test_paired_counts_per_class_and_their_merge():
    labels = np.array([0, 0, 1, 1, 2, 2])
    cand = onehot([0, 1, 1, 0, 2, 0])     # right on records 0, 2, 4
    serving = onehot([0, 0, 0, 1, 0, 2])  # right on records 0, 1, 3, 5
    acc = metrics.update_pairs(metrics.empty_pairs(), labels, cand, serving)
    assert acc["records"].tolist()[:3] == [2, 2, 2] and acc["records"].sum() == 6
    assert acc["cand_only"].tolist()[:3] == [0, 1, 1]       # records 2 (class 1) and 4 (class 2)
    assert acc["serving_only"].tolist()[:3] == [1, 1, 1]    # records 1, 3, 5
    merged = metrics.merge_pairs(acc, metrics.update_pairs(metrics.empty_pairs(), labels[:2], cand[:2], serving[:2]))
    assert merged["records"].tolist()[:3] == [4, 2, 2] and merged["serving_only"].tolist()[:3] == [2, 1, 1]
    assert acc["records"].sum() == 6  # neither input changed
