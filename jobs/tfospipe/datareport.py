"""The data report of a task on a dataset version: one self-contained HTML page.

It shows a split of the version (from its ``_stats.json``, see :mod:`datastats`) next to the same kind of
split of a reference version (the one the data checks compared with), when there is one:

1. the label distributions (fractions per class, both bars on one axis; none for an unlabeled split),
2. the per-pixel mean and standard deviation as heat maps of the image shape (one colour scale per pair),
3. the per-pixel drift score (Jensen-Shannon divergence of the histograms, in bits) as a heat map,
4. every finding of the data checks (anomalies first, highlighted) and a one-line decision summary,
5. the split's whole-split figures: rows, blank and duplicate rows, train/eval overlap, value range.

Figures are PNGs embedded as base64 ``data:`` URIs (80 dpi, 3-4 inches); the page loads nothing else and
escapes every text it shows. matplotlib is imported inside the functions that draw (Agg backend): the
jobs import this module on the driver only when they write a report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math

import numpy as np

from . import fs, schema

#: Resolution of the embedded figures (dots per inch).
DPI = 80

_CSS = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}"
        "tr.anomaly{background:#fdd;font-weight:bold}.fig{display:inline-block;vertical-align:top;margin:0 1em 1em 0}"
        ".note{color:#666;font-style:italic}.bad{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}")
_COLUMNS = ("kind", "split", "where", "value", "threshold", "param", "uncertainty", "reference", "anomaly")


def render(version: str, stats: dict, reference: dict | None, reference_name: str | None,
           findings: list[dict], task: str, split: str = "train", ref_split: str = "train",
           feature_scores: list[float] | None = None) -> str:
    """One self-contained HTML page (images embedded as base64 PNG, no external resources, escapes every
    text it shows): the data report of ``task`` on dataset ``version``.

    ``stats``/``reference``: ``_stats.json`` contents (:mod:`datastats` format 1) of the version and of the
    reference version ``reference_name`` (None for a first version: the page shows the version alone);
    ``split`` of the version is compared with ``ref_split`` of the reference. ``findings``: the data
    checks' findings (dicts with kind, split, where, value, threshold, param, uncertainty, reference,
    anomaly; missing keys show as empty cells). ``feature_scores``: the per-pixel drift scores (H*W
    floats, bits) when the checks computed them, else :func:`feature_drift_scores` computes them; when
    the two versions' bins or shapes differ the page says why there is no drift map. Raises ValueError
    when ``split`` is not in ``stats`` or ``ref_split`` not in ``reference``.
    """
    cur = _split_of(stats, split, "version")
    ref = _split_of(reference, ref_split, "reference") if reference is not None else None
    ref_label = f"{reference_name or 'reference'} ({ref_split})"
    cur_label = f"{version} ({split})"
    parts = [f"<h1>Data report: {_e(task)} on {_e(version)}</h1>",
             f"<p>Split <b>{_e(split)}</b>, {_e(cur['rows'])} rows. " + (
                 f"Reference: version <b>{_e(reference_name or '?')}</b>, split <b>{_e(ref_split)}</b>.</p>"
                 if ref is not None else "There is no reference version (first version): "
                                         "this version is shown alone.</p>"),
             "<h2>Decision</h2>", _decision(findings),
             "<h2>Findings</h2>", _findings_table(findings),
             "<h2>Whole-split figures</h2>", _figures_table(stats, cur, reference, ref, cur_label, ref_label)]
    parts += ["<h2>Label distribution</h2>"]
    if cur["label_counts"]:
        parts.append(_img(_label_png(cur, ref, cur_label, ref_label), "label distribution"))
    else:
        parts.append(f"<p class=note>Split {_e(split)} is unlabeled: no label distribution.</p>")
    parts += ["<h2>Per-pixel mean and standard deviation</h2>",
              _img(_moments_png(stats, cur, reference, ref, cur_label, ref_label), "per-pixel mean and std"),
              "<h2>Per-pixel drift</h2>", _drift_section(stats, reference, split, ref_split, feature_scores)]
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>Data report: {_e(task)} on {_e(version)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def feature_drift_scores(stats: dict, reference: dict, split: str, ref_split: str) -> list[float]:
    """Per-feature Jensen-Shannon divergence (bits, each in ``[0, 1]``) between the two splits'
    histograms: ``split`` of ``stats`` against ``ref_split`` of ``reference`` (``_stats.json`` contents).

    Returns H*W floats, row-major over the image. Raises ValueError when a split is missing or empty,
    or when the two versions' image shapes or histogram bins (``bin_edges``) differ (histograms over
    different ranges are not comparable bin by bin).
    """
    if list(stats["image_shape"]) != list(reference["image_shape"]):
        raise ValueError(f"image shapes differ: {stats['image_shape']} vs reference {reference['image_shape']}")
    if list(stats["bin_edges"]) != list(reference["bin_edges"]):
        raise ValueError(f"histogram bins differ: value_max {stats['value_max']} in {stats['num_bins']} bins vs "
                         f"reference value_max {reference['value_max']} in {reference['num_bins']} bins")
    from .datachecks import js_bits  # the checks' own measure, so the map shows what they compared
    p = _histograms(_split_of(stats, split, "version"), split)
    q = _histograms(_split_of(reference, ref_split, "reference"), ref_split)
    return js_bits(p, q).tolist()


def write(path: str, html_text: str) -> None:
    """Write the page ``html_text`` as UTF-8 at ``path`` through the storage layer (a local path or a URI
    of a scheme :mod:`fs` supports; replaces the file). Raises fs.StorageError as :func:`fs.write_bytes`."""
    fs.write_bytes(path, html_text.encode("utf-8"))


# --- statistics -------------------------------------------------------------------------------------


def _split_of(stats, split, what):
    try:
        return stats["splits"][split]
    except KeyError:
        raise ValueError(f"the {what}'s statistics have no split {split!r} "
                         f"(splits: {', '.join(sorted(stats.get('splits', {}))) or 'none'})") from None


def _histograms(split_stats, name):
    """Per-feature histograms as probabilities, float [P, bins]. Raises ValueError for an empty split."""
    if not split_stats["rows"]:
        raise ValueError(f"split {name!r} is empty")
    h = np.asarray(split_stats["features"]["histogram"], np.float64)
    return h / np.maximum(h.sum(axis=1, keepdims=True), 1.0)


def _feature(split_stats, key, shape):
    """A per-feature figure as a float image of ``shape`` (NaN where null: an empty split)."""
    values = split_stats["features"][key]
    return np.array([np.nan if v is None else v for v in values], np.float64).reshape(shape)


def _fractions(split_stats):
    counts = np.zeros(schema.NUM_CLASSES)
    for k, v in split_stats["label_counts"].items():
        if 0 <= int(k) < schema.NUM_CLASSES:
            counts[int(k)] = v
    return counts / max(counts.sum(), 1.0)


def _value_range(split_stats):
    lo = [v for v in split_stats["features"]["min"] if v is not None]
    hi = [v for v in split_stats["features"]["max"] if v is not None]
    return f"{min(lo)}..{max(hi)}" if lo else "none (empty)"


# --- figures ----------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _label_png(cur, ref, cur_label, ref_label) -> bytes:
    """Bars of the class fractions: the version's split and, when given, the reference's, on one axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.0, 2.8))
    x = np.arange(schema.NUM_CLASSES)
    width = 0.4 if ref is not None else 0.8
    tops = [_fractions(cur)]
    ax.bar(x - (width / 2 if ref is not None else 0), tops[0], width, label=cur_label, color="#1f77b4")
    if ref is not None and ref["label_counts"]:
        tops.append(_fractions(ref))
        ax.bar(x + width / 2, tops[1], width, label=ref_label, color="#ff7f0e")
    ax.set_ylim(0, max(float(np.max(tops)), 0.01) * 1.3)                  # room for the legend
    ax.set_xticks(x)
    ax.set_xlabel("class")
    ax.set_ylabel("fraction of rows")
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    fig.tight_layout()
    return _png(fig)


def _moments_png(stats, cur, reference, ref, cur_label, ref_label) -> bytes:
    """Mean (top) and std (bottom) heat maps: the version, then the reference; one colour bar per row."""
    plt = _pyplot()
    cols = [(stats, cur, cur_label)] + ([(reference, ref, ref_label)] if ref is not None else [])
    fig, axes = plt.subplots(2, len(cols), figsize=(2.0 * len(cols) + 0.8, 3.8), squeeze=False)
    for row, key in enumerate(("mean", "std")):
        images = [_feature(s, key, tuple(st["image_shape"])) for st, s, _ in cols]
        finite = [im[np.isfinite(im)] for im in images]
        vmax = max([float(f.max()) for f in finite if f.size] + [1e-9])
        for ax, im, (_, _, label) in zip(axes[row], images, cols):
            shown = ax.imshow(im, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{key}: {label}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(shown, ax=list(axes[row]), shrink=0.8)
    return _png(fig)


def _drift_png(scores, shape) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.2, 2.8))
    image = np.asarray(scores, np.float64).reshape(shape)
    top = max(float(np.nanmax(image)) if np.isfinite(image).any() else 0.0, 0.05)   # small drift stays visible
    shown = ax.imshow(image, cmap="magma", vmin=0.0, vmax=min(top, 1.0), interpolation="nearest")
    ax.set_title("Jensen-Shannon divergence (bits)", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(shown, ax=ax)
    fig.tight_layout()
    return _png(fig)


# --- HTML -------------------------------------------------------------------------------------------


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    return (f"<div class=fig><img alt=\"{_e(alt)}\" "
            f"src=\"data:image/png;base64,{base64.b64encode(png).decode('ascii')}\"></div>")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _drift_section(stats, reference, split, ref_split, feature_scores) -> str:
    if reference is None:
        return "<p class=note>No reference version: no drift to show.</p>"
    shape = tuple(stats["image_shape"])
    try:
        scores = feature_scores if feature_scores is not None else feature_drift_scores(
            stats, reference, split, ref_split)
        if len(scores) != shape[0] * shape[1]:
            raise ValueError(f"{len(scores)} drift scores for an image of {shape[0]}x{shape[1]} pixels")
    except ValueError as exc:
        return f"<p class=note>No drift map: {_e(exc)}.</p>"
    arr = np.asarray(scores, np.float64)
    worst = int(np.nanargmax(arr)) if np.isfinite(arr).any() else 0
    return (_img(_drift_png(arr, shape), "per-pixel drift")
            + f"<p>Largest: {arr[worst]:.4g} bits at pixel {worst} (row {worst // shape[1]}, column "
              f"{worst % shape[1]}); mean {np.nanmean(arr):.4g} bits.</p>")


def _findings_table(findings) -> str:
    if not findings:
        return "<p class=note>No findings.</p>"
    ordered = sorted(findings, key=lambda f: not f.get("anomaly"))
    rows = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in _COLUMNS) + "</tr>"]
    for f in ordered:
        cls = " class=anomaly" if f.get("anomaly") else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{_e(_fmt(f.get(c)))}</td>" for c in _COLUMNS) + "</tr>")
    return "\n".join(rows) + "</table>"


def _decision(findings) -> str:
    bad = [f for f in findings if f.get("anomaly")]
    if not bad:
        return f"<p class=ok>No anomaly in {len(findings)} finding(s): the data checks pass.</p>"
    kinds = ", ".join(sorted({f"{f.get('kind')} ({f.get('split')})" for f in bad}))
    return (f"<p class=bad>{len(bad)} anomal{'y' if len(bad) == 1 else 'ies'} in {len(findings)} finding(s): "
            f"{_e(kinds)}.</p>")


def _figures_table(stats, cur, reference, ref, cur_label, ref_label) -> str:
    cols = [(stats, cur, cur_label)] + ([(reference, ref, ref_label)] if ref is not None else [])
    lines = ["<table><tr><th></th>" + "".join(f"<th>{_e(label)}</th>" for _, _, label in cols) + "</tr>"]
    for name, get in (("rows", lambda st, s: s["rows"]), ("blank rows", lambda st, s: s["blank_rows"]),
                      ("duplicate rows", lambda st, s: s["duplicate_rows"]),
                      ("train/eval overlap (version)", lambda st, s: st.get("train_eval_overlap")),
                      ("value range", lambda st, s: f"{_value_range(s)} of 0..{st['value_max']}"),
                      ("image shape", lambda st, s: "x".join(str(d) for d in st["image_shape"]))):
        lines.append(f"<tr><td>{name}</td>" + "".join(f"<td>{_e(_fmt(get(st, s)))}</td>" for st, s, _ in cols)
                     + "</tr>")
    return "\n".join(lines) + "</table>"
