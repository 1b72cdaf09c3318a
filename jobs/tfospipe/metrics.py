"""Classification metrics from a confusion matrix (rows: true class, columns: predicted class)."""

import numpy as np

from . import schema


def empty():
    """Accumulator of one model's evaluation: confusion matrix, summed log loss, bad outputs."""
    return {"confusion": np.zeros((schema.NUM_CLASSES, schema.NUM_CLASSES), np.int64), "loss_sum": 0.0,
            "bad_outputs": 0}


def update(acc, labels, probabilities):
    """Add a batch: ``labels`` int [N], ``probabilities`` float [N, C]."""
    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    finite = np.isfinite(probabilities).all(axis=1)
    sums_to_one = np.abs(probabilities.sum(axis=1) - 1.0) < 1e-3
    acc["bad_outputs"] += int((~(finite & sums_to_one)).sum())
    predicted = probabilities.argmax(axis=1)
    np.add.at(acc["confusion"], (labels, predicted), 1)
    picked = probabilities[np.arange(len(labels)), labels]
    acc["loss_sum"] += float(-np.log(np.clip(picked, 1e-12, 1.0)).sum())
    return acc


def merge(a, b):
    return {"confusion": a["confusion"] + b["confusion"], "loss_sum": a["loss_sum"] + b["loss_sum"],
            "bad_outputs": a["bad_outputs"] + b["bad_outputs"]}


def summarize(acc):
    """accuracy, loss, per-class precision/recall/F1, confusion matrix, examples."""
    cm = np.asarray(acc["confusion"], np.int64)
    n = int(cm.sum())
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    return {
        "examples": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "loss": float(acc["loss_sum"] / n) if n else 0.0,
        "bad_outputs": int(acc["bad_outputs"]),
        "per_class": {str(c): {"precision": round(float(precision[c]), 4), "recall": round(float(recall[c]), 4),
                               "f1": round(float(f1[c]), 4), "support": int(actual[c])}
                      for c in range(len(cm))},
        "confusion_matrix": cm.tolist(),
    }
