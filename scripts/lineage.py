"""Trace one prediction back to the CSV line it was made from.

    python scripts/lineage.py DATASET_VERSION ROW_ID [--root ROOT] [--json]

Prints the chain, one link a line:

    prediction       the row's predicted class, probability, label and model version (predictions/<version>/)
    model version    its digest, when it was promoted, its gate accuracy (serving/models/<model_version>/)
    training run     run id, the dataset version it trained on, git revision, params, final metrics
                     (models/<version>/<run>/_manifest.json), and whether that run dir still holds this model
    dataset version  the conversion's params, git revision and the source file's checksum
                     (tfrecords/<version>/_manifest.json)
    source           file:line in raw/<version>/ and the split, from the conversion's lineage index
                     (tfrecords/<version>/_lineage/), and whether the file is unchanged since the conversion
    raw line         the text of that line (plain, .gz, .bz2 or .xz; its line terminator as the manifest records)

``--json`` prints the same as one JSON object. ``ROOT`` defaults to $AIRFLOW_VAR_TFOS_DATA_ROOT, else ``data``.
Exit status 0, or 2 with one ``error: ...`` line (no predictions for the version, no such row id, a
missing link; a root that cannot be read: an unsupported scheme, refused or missing credentials, an
unreachable store, a bucket or root that does not exist, fs.check_access) saying what is missing and
what to run.
"""
import argparse
import codecs
import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfospipe import csvparse, dataset, fs, inputs, paths, serving
from tfospipe.runner import JobError


class LineageError(ValueError):
    """A link of the chain that cannot be followed: what is missing, where, and what to do."""


def _rows(files, row_id):
    """Rows whose ``row_id`` equals ``row_id`` in the Parquet ``files`` (as dicts)."""
    import pyarrow.parquet as pq

    found = []
    for path in files:
        with fs.open_read(path) as f:
            # on this thread, without Arrow's pre-buffering: its I/O threads would otherwise still hold
            # buffers of the Python file object when the interpreter exits, and release them then, which
            # aborts the process ("terminate called without an active exception", 4 runs in 30 on a busy
            # machine) after the command has printed its answer
            found += pq.read_table(f, filters=[("row_id", "=", row_id)], pre_buffer=False,
                                   use_threads=False).to_pylist()
    return found


def lineage_rows(layout: paths.Layout, version: str, row_id: int) -> list[dict]:
    """``[{"row_id", "file", "line", "split"}]`` of ``row_id`` in a version's lineage index (normally one).

    Raises LineageError when the version was converted without an index.
    """
    index = paths.join(dataset.version_dir(layout, version), paths.LINEAGE_DIR)
    files = fs.glob(paths.join(index, "*.parquet"))
    if not files:
        raise LineageError(f"dataset version {version} has no lineage index ({index} is missing or empty): it was "
                           "converted before the index existed; rerun the convert task for it (row ids do not change)")
    return _rows(files, row_id)


def raw_line(path: str, name: str, line: int, eol: bytes, encoding: str = "UTF-8") -> str:
    """The text of line ``line`` (1-based) of an input file, without its line terminator (and without a
    byte-order mark on line 1), decompressed by its suffix; ``eol`` and ``encoding`` as the manifest's
    dialect of the file says (:func:`_line_end`). Raises LineageError when the file has fewer lines."""
    seen = 0
    for chunk in inputs.range_chunks(name, path, 0, fs.size(path), eol):
        count = chunk.count(eol) + (0 if chunk.endswith(eol) else 1)
        if seen + count >= line:
            text = chunk.split(eol)[line - seen - 1]
            if encoding in csvparse.UTF16:
                text = text.decode(csvparse.UTF16[encoding][1], "replace").encode("utf-8")
            if line == 1 and text.startswith(codecs.BOM_UTF8):
                text = text[len(codecs.BOM_UTF8):]
            if eol.strip(b"\x00") == b"\n" and text.endswith(b"\r"):
                text = text[:-1]
            return text.decode("utf-8", "replace")
        seen += count
    raise LineageError(f"{path} has {seen} lines, not {line}: it changed since the conversion")


def _line_end(dialect: dict) -> tuple[bytes, str]:
    """``(eol, encoding)`` of an input file from its dialect in the conversion manifest."""
    encoding = dialect["encoding"].removesuffix(" with BOM")
    char = "\r" if dialect["line_terminator"] == "CR" else "\n"
    return char.encode(csvparse.UTF16[encoding][1] if encoding in csvparse.UTF16 else "ascii"), encoding


def _sha256(path):
    h = hashlib.sha256()
    with fs.open_read(path) as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def _prediction(layout: paths.Layout, version: str, row_id: int) -> dict:
    """The prediction of ``row_id`` among the committed predictions of ``version``; LineageError when
    there are none, or none for this row id (saying whether the row exists and which split infer scored)."""
    paths.check_segment(version)
    pred_dir = layout.predictions(version)
    if not fs.is_committed(pred_dir):
        raise LineageError(f"no predictions for dataset version {version} ({pred_dir} has no _SUCCESS): run the infer "
                           "task for this version first")
    published = fs.resolve(pred_dir)  # the attempt its commit pointer names
    pred_manifest = fs.read_json(paths.join(published, fs.MANIFEST))
    predictions = _rows(fs.glob(paths.join(published, "*.parquet")), row_id)
    if not predictions:
        where = lineage_rows(layout, version, row_id)
        if where:
            raise LineageError(
                f"row id {row_id} is {where[0]['file']}:{where[0]['line']} of dataset version {version} (split "
                f"{where[0]['split']}), but it has no prediction: infer scored the {pred_manifest.get('split')} split "
                f"({pred_manifest.get('rows_out')} rows in {pred_dir})")
        raise LineageError(f"no row id {row_id} in dataset version {version}: it is neither among the "
                           f"{pred_manifest.get('rows_out')} predictions in {pred_dir} nor in the lineage index "
                           f"{layout.lineage(version)}; take a row_id from the predictions' Parquet")
    return predictions[0]


def _source(layout: paths.Layout, version: str, row_id: int) -> tuple[dict, dict, dict, str]:
    """``(conversion manifest, lineage index row, the manifest's entry of its file, the file's path)`` of
    ``row_id``'s source line; LineageError when the index, the manifest or the file do not hold it."""
    try:
        conversion = dataset.read_manifest(layout, version)
    except JobError as e:
        raise LineageError(str(e)) from None
    where = lineage_rows(layout, version, row_id)
    if not where:
        raise LineageError(f"row id {row_id} has a prediction but is not in the lineage index {layout.lineage(version)}: "
                           f"the version was converted again since infer ran; rerun infer for {version}")
    src = where[0]
    entry = next((i for i in conversion["inputs"] if i["file"] == src["file"]), None)
    if entry is None:
        raise LineageError(f"{src['file']} (row id {row_id}) is not among the inputs of the conversion manifest of "
                           f"{version}: the index and the manifest disagree; rerun the convert task")
    path = paths.join(layout.raw(version), src["file"])
    if not fs.exists(path):
        raise LineageError(f"the source file {path} of row id {row_id} is gone from raw/{version}/")
    return conversion, src, entry, path


def trace(layout: paths.Layout, version: str, row_id: int) -> dict:
    """The lineage of one prediction: ``{"prediction", "model", "training_run", "dataset", "source"}``.

    Raises LineageError for a link that cannot be followed (no predictions for the version, no such
    row id, a model or run that is gone, a version converted without a lineage index).
    """
    pred = _prediction(layout, version, row_id)
    mv = pred["model_version"]

    model_dir = layout.serving_model(mv)
    if not fs.is_committed(model_dir):
        raise LineageError(f"the prediction names model version {mv}, which is not a committed model in "
                           f"{layout.serving()}/models; it was removed from the serving area")
    model = serving.model_info(layout, mv)

    run_dir = layout.model_run(model["dataset_version"], model["run_id"])
    if not fs.is_committed(run_dir):
        raise LineageError(f"model version {mv} was trained by run {model['run_id']} of dataset version "
                           f"{model['dataset_version']}, but {run_dir} holds no committed training run")
    run = fs.read_json(paths.join(run_dir, fs.MANIFEST))
    run_digest = serving.model_digest(layout.exported_model(model["dataset_version"], model["run_id"]))

    conversion, src, entry, path = _source(layout, version, row_id)
    eol, encoding = _line_end(entry["dialect"])
    sha = _sha256(path)
    return {
        "prediction": {k: pred[k] for k in ("row_id", "predicted_class", "probability", "label", "model_version",
                                            "dataset_version")},
        "model": {"model_version": mv, "path": model_dir,
                  **{k: model.get(k) for k in ("digest", "promoted_at", "accuracy", "loss", "examples", "source",
                                               "report")}},
        "training_run": {"run_id": model["run_id"], "path": run_dir,
                         "holds_this_model": run_digest == model.get("digest"), "model_digest": run_digest,
                         **{k: run.get(k) for k in ("dataset_version", "git_revision", "params", "steps_run",
                                                    "final_loss", "final_accuracy", "final_eval_loss",
                                                    "final_eval_accuracy")}},
        "dataset": {"dataset_version": version, "path": layout.tfrecords(version),
                    "git_revision": conversion.get("git_revision"), "params": conversion.get("params"),
                    "rows_written": conversion.get("rows_written"), "input": entry},
        "source": {"file": src["file"], "line": src["line"], "split": src["split"], "path": path,
                   "unchanged": sha == entry["sha256"], "sha256": sha,
                   "row_id_matches": csvparse.row_id(src["file"], src["line"]) == row_id,
                   "text": raw_line(path, src["file"], src["line"], eol, encoding)},
    }


def render(chain: dict) -> str:
    """The chain as text, one link per line (the format the module docstring shows)."""
    p, m, r, d, s = (chain[k] for k in ("prediction", "model", "training_run", "dataset", "source"))
    label = "unlabeled" if p["label"] is None else f"label {p['label']}"
    accuracy = f"{m['accuracy']:.4f}" if isinstance(m.get("accuracy"), (int, float)) else "unknown"
    held = ("its model has this digest" if r["holds_this_model"] else
            f"WARNING: it now holds another model (digest {r['model_digest'][:12]}): trained again under this run id")
    metrics = ", ".join(f"{k[len('final_'):]} {r[k]:.4f}" for k in ("final_loss", "final_accuracy", "final_eval_loss",
                                                                      "final_eval_accuracy")
                        if isinstance(r.get(k), (int, float)))
    inp = d["input"]
    changed = "unchanged since conversion (sha256 matches)" if s["unchanged"] else \
        f"WARNING: changed since conversion (sha256 now {s['sha256'][:16]}...)"
    lines = [
        f"prediction       row {p['row_id']} of dataset version {p['dataset_version']}: class {p['predicted_class']} "
        f"probability {p['probability']:.4f} ({label}), model version {p['model_version']}",
        f"model version    {m['model_version']}: digest {m['digest']}, promoted {m['promoted_at']}, "
        f"gate accuracy {accuracy} on {m.get('examples')} examples ({m['path']})",
        f"training run     {r['run_id']}: trained on dataset version {r['dataset_version']}, git revision "
        f"{r['git_revision']}, params {json.dumps(r['params'], sort_keys=True)}, final {metrics}, "
        f"{r['steps_run']} steps ({r['path']}; {held})",
        f"dataset version  {d['dataset_version']}: git revision {d['git_revision']}, params "
        f"{json.dumps(d['params'], sort_keys=True)}, {d['rows_written']} rows written; input {inp['file']} "
        f"{inp['bytes']} bytes sha256 {inp['sha256']} ({d['path']})",
        f"source           {s['file']}:{s['line']} (split {s['split']}; {s['path']}, {changed})",
        f"raw line         {s['text']}",
    ]
    if not s["row_id_matches"]:
        lines.append(f"WARNING: row id {p['row_id']} is not the hash of {s['file']}:{s['line']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Trace the row of ``argv`` (default: sys.argv[1:]); exit status 0, or 2 with one ``error:`` line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_version", help="dataset version whose predictions hold the row")
    p.add_argument("row_id", type=int, help="row_id of the prediction (the predictions' Parquet column)")
    p.add_argument("--root", default=os.environ.get("AIRFLOW_VAR_TFOS_DATA_ROOT", "data"), help="data root")
    p.add_argument("--json", action="store_true", help="print the chain as one JSON object")
    args = p.parse_args(argv)
    try:
        fs.check_access(args.root, must_exist=True)
        chain = trace(paths.Layout(args.root), args.dataset_version, args.row_id)
    except (LineageError, paths.PathError, csvparse.InputError, OSError, fs.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(chain, indent=2, sort_keys=True, default=str) if args.json else render(chain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
