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
