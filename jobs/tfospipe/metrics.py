"""Classification metrics from a confusion matrix (rows: true class, columns: predicted class).

An accumulator (:func:`empty`) holds ``confusion`` int64 [10, 10], ``loss_sum`` (summed cross-entropy
in nats) and ``bad_outputs`` (rows whose output is not a finite probability vector summing to 1);
executors fill one per partition (:func:`update`), the driver merges them (:func:`merge`) and
reports the figures (:func:`summarize`).

Two models scored on the same records also fill a paired accumulator (:func:`empty_pairs`,
:func:`update_pairs`, :func:`merge_pairs`): per true class the records and the discordant pairs, what
the gate's paired tests need (significance.compare).
"""

import numpy as np

from . import schema


def empty() -> dict:
    """Accumulator of one model's evaluation: confusion matrix, summed log loss, bad outputs (all zero)."""
    return {"confusion": np.zeros((schema.NUM_CLASSES, schema.NUM_CLASSES), np.int64), "loss_sum": 0.0,
            "bad_outputs": 0}


def update(acc: dict, labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Add a batch to ``acc`` in place and return it: ``labels`` int [N] (0..C-1), ``probabilities`` float [N, C].

    A row counts as a bad output when its probabilities are not all finite or do not sum to 1 within
    1e-3; its log loss uses the label's probability clipped to [1e-12, 1]."""
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


def merge(a: dict, b: dict) -> dict:
    """The sum of two accumulators (a new one; neither is changed)."""
    return {"confusion": a["confusion"] + b["confusion"], "loss_sum": a["loss_sum"] + b["loss_sum"],
            "bad_outputs": a["bad_outputs"] + b["bad_outputs"]}


def summarize(acc: dict) -> dict:
    """The figures of an accumulator: ``examples``, ``accuracy`` (0..1), ``loss`` (mean cross-entropy,
    nats), ``bad_outputs``, ``per_class`` (``{"0": {"precision", "recall", "f1", "support"}}``, rounded
    to 4 digits; 0 where undefined) and ``confusion_matrix`` (lists). Accuracy and loss are 0.0 for
    no examples."""
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


def empty_pairs() -> dict:
    """Paired accumulator of two models on the same records, int64 [10] per true class (all zero):
    ``records``, ``cand_only`` (the candidate right, the serving model wrong), ``serving_only`` (the reverse)."""
    return {key: np.zeros(schema.NUM_CLASSES, np.int64) for key in ("records", "cand_only", "serving_only")}


def update_pairs(acc: dict, labels: np.ndarray, candidate: np.ndarray, serving: np.ndarray) -> dict:
    """Add a batch to the paired accumulator ``acc`` in place and return it: ``labels`` int [N] (0..C-1),
    ``candidate`` and ``serving`` the two models' probabilities float [N, C] on the same rows (the
    predicted class is the argmax, as in :func:`update`)."""
    labels = np.asarray(labels, np.int64)
    right_c = np.asarray(candidate).argmax(axis=1) == labels
    right_s = np.asarray(serving).argmax(axis=1) == labels
    np.add.at(acc["records"], labels, 1)
    np.add.at(acc["cand_only"], labels[right_c & ~right_s], 1)
    np.add.at(acc["serving_only"], labels[right_s & ~right_c], 1)
    return acc


def merge_pairs(a: dict, b: dict) -> dict:
    """The sum of two paired accumulators (a new one; neither is changed)."""
    return {key: a[key] + b[key] for key in a}
