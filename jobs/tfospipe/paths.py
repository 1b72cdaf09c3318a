"""The one path layout of the pipeline, shared by the DAG, the jobs, the scripts and the benchmarks.

Everything lives under a data root: a local directory (made absolute, :func:`normalize_root`) or a URI
of a scheme the storage layer accepts (``fs.SCHEMES``: s3, s3a, gs, hdfs, abfs, abfss) that every
executor can reach. Local paths are joined with ``os.path``, URIs with ``/`` (:func:`join`)::

    {root}/raw/{version}/                           input CSV files of a dataset version (plain or
                                                    compressed; unlabeled ones under score/)
    {root}/tfrecords/{version}/{train,eval,score}/  TFRecord shards part-NNNNN.tfrecord[.gz]
    {root}/tfrecords/{version}/_lineage/            row_id -> source file and line (Parquet), committed
                                                    with the shards, then _manifest.json and _SUCCESS
    {root}/tfrecords/{version}/_stats.json          the splits' statistics (datastats), committed with
                                                    the shards
    {root}/schema/schema.json                       the data's schema (datachecks.Schema): inferred from
                                                    the first version, then the user's to edit
    {root}/data-checks/{version}/{task}.json        the data checks a task ran on the version, and its
                                                    decision; {task}.html: the data report
    {root}/quarantine/{version}/                    rows that could not be converted (JSON lines), kept
                                                    for passed and failed conversions alike
    {root}/models/{version}/{run}/                  one training run: model/ (SavedModel), backup/
                                                    (BackupAndRestore state), tensorboard/, workers/ (the
                                                    nodes' done/error markers), progress.log,
                                                    _manifest.json, _SUCCESS
    {root}/validation/{version}/{run}/              the gate's report of that run: metrics.json,
                                                    confusion_matrix.png, report.md, _manifest.json, _SUCCESS
    {root}/serving/models/{model_version}/          promoted SavedModels, kept for rollback
    {root}/serving/CURRENT.json                     pointer to the model now serving
    {root}/serving/history/                         one JSON object per serving decision
    {root}/predictions/{version}/                   Parquet predictions, _manifest.json, _SUCCESS

Every output but a training run is published through its commit pointer (``fs.Staging``): its files lie
in a hidden attempt directory beside it, ``{parent}/.{name}.attempts/{UTC start}Z-{random}/``, and the
output path is a symbolic link to it (local root) or holds ``_COMMIT.json`` naming it (object stores);
read it through ``fs.resolve``. A promoted model is published once, by a rename (local) or a create-only
``_COMMIT.json``.

The names of the entries inside a directory (a run's ``model/``, ``progress.log``...) are the constants
below; :class:`Layout` builds the paths that start at the root. Versions, run ids and model versions
become path segments, so they are checked here (:func:`check_segment`): no separators, no ``..``, no
whitespace or shell metacharacters; a bad one raises :class:`PathError`.
"""

from __future__ import annotations

import os
import re

#: The one rule for a path segment (dataset version, run id, model version): 1-128 letters, digits,
#: '.', '_' and '-', starting with a letter or digit, no '..'. Written for ``re.search``, which is how
#: JSON schema's "pattern" applies it (jsonschema in Airflow, a browser's RegExp): a bare ``$`` also
#: matches before a final newline in Python, so the end is ``$(?!\n)`` (``\Z`` means "Z" in a
#: browser). check_segment and the DAG's dataset_version param both use this pattern.
SEGMENT_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$(?!\n)"
_SEGMENT = re.compile(SEGMENT_PATTERN)
_RUN_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Directory of the lineage index inside a version's TFRecords ('_': no shard glob or Parquet reader
#: of the version's directory sees it).
LINEAGE_DIR = "_lineage"

# Entries of a training run's directory ({root}/models/{version}/{run}/).
#: The SavedModel the chief exports.
MODEL_DIR = "model"
#: Where the chief uploads its SavedModel before renaming it to :data:`MODEL_DIR` (roots reached
#: through scratch copies).
MODEL_STAGING_DIR = ".model.staging"
#: BackupAndRestore state, one subdirectory per node whose checkpoint is kept (:data:`CHIEF_BACKUP`).
BACKUP_DIR = "backup"
#: The subdirectory of :data:`BACKUP_DIR` every node restores from: the chief's checkpoint.
CHIEF_BACKUP = "chief"
#: The chief's TensorBoard logs.
TENSORBOARD_DIR = "tensorboard"
#: The nodes' done and error markers (``markers``).
MARKERS_DIR = "workers"
#: One line per finished epoch (and the start), written by the chief; the driver tails it.
PROGRESS_LOG = "progress.log"

# Files of a validation report directory ({root}/validation/{version}/{run}/).
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
REPORT_FILE = "report.md"

#: A converted version's statistics, beside its shards (``tfrecords/{version}/_stats.json``).
STATS_FILE = "_stats.json"


class PathError(ValueError):
    """A version or run id that cannot be used as a path segment."""


def check_segment(value: object, what: str = "dataset version") -> str:
    """Return ``value`` if it is a safe single path segment (:data:`SEGMENT_PATTERN`), else raise PathError."""
    if not isinstance(value, str) or not _SEGMENT.search(value):
        raise PathError(
            f"invalid {what} {value!r}: use 1-128 characters from letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, with no '..' (for example 2026-11-28)")
    return value


def run_slug(run_id: object) -> str:
    """The folder name of an Airflow run id: ``manual__2026-11-28T10:00:00+00:00`` ->
    ``manual__2026-11-28T10.3a00.3a00.2b00.3a00``. Injective: two different run ids never share a folder.

    Letters, digits, and ``_``/``-`` after the first character stay as they are; every other character
    (``.`` included) becomes ``.`` and the two lowercase hex digits of each of its UTF-8 bytes (``exp:1``
    -> ``exp.3a1``, ``exp+1`` -> ``exp.2b1``, ``a.b`` -> ``a.2eb``). A name that would start with an
    escape gets ``x.-`` in front (``_r`` -> ``x.-.5fr``; an escape never makes ``.-``). A name over
    128 characters keeps at most its first 111 (no escape cut) and ends in ``.h`` and 15 hex digits of
    the run id's sha256 (an escape never makes ``.h``): only such long names could share a folder, if
    those 60 bits of their digests were equal. Raises PathError for an empty run id.

    Before this encoding, runs of other characters became one ``_`` (:func:`legacy_run_slug`), so
    ``exp:1`` and ``exp+1`` shared ``exp_1``; such a folder is never read for a run id whose folder name
    differs (validate names such a folder when it refuses a missing run: ``validate._legacy_run_note``)."""
    text = str(run_id)
    if not text:
        raise PathError("invalid run id '': it is empty")
    out = []
    for i, ch in enumerate(text):
        if ch.isascii() and (ch.isalnum() or (i > 0 and ch in "_-")):
            out.append(ch)
        else:
            out.append("".join(f".{b:02x}" for b in ch.encode("utf-8")))
    name = "".join(out)
    if not name[0].isalnum():
        name = "x.-" + name  # an escape never makes ".-"
    if len(name) > 128:
        import hashlib
        cut = name[:111]
        if "." in cut[-3:]:  # no escape cut in two, no '.' before the '.h'
            cut = cut[:cut.rfind(".", len(cut) - 3)]
        name = cut + ".h" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:15]
    return check_segment(name, "run id")


def legacy_run_slug(run_id: object) -> str:
    """The folder name the pipeline gave a run id before :func:`run_slug` was injective: runs of
    characters outside :data:`SEGMENT_PATTERN` (and of dots) became ``_``, the ends stripped of ``._-``,
    cut at 128 characters (``run`` when nothing was left). Only to recognise old folders."""
    slug = re.sub(r"\.{2,}", "_", _RUN_UNSAFE.sub("_", str(run_id))).strip("._-")  # Airflow allows 'a..b'
    return check_segment(slug[:128] or "run", "run id")


def join(*parts: str) -> str:
    """Join a root (local path or URI) with segments, using '/' for URIs."""
    root, rest = parts[0], [p.strip("/") for p in parts[1:] if p]
    if "://" in root:
        return "/".join([root.rstrip("/")] + rest)
    return os.path.join(root, *rest)


def normalize_root(root: str) -> str:
    """A local root becomes absolute (executors do not share the driver's working directory)."""
    if "://" in root:
        return root.rstrip("/")
    return os.path.abspath(root)


class Layout:
    """Paths of every artefact under one data root, keyed by dataset version (and run id for a
    training run and its report, model version for a promoted model).

    Every method returns a path (a string: local and absolute, or a URI) under :attr:`root` as the
    module docstring lays it out, without touching the storage, and raises PathError when a version,
    run id or model version is not a safe path segment (:func:`check_segment`).
    """

    def __init__(self, root: str):
        self.root = normalize_root(root)

    def raw(self, version: str) -> str:
        """``{root}/raw/{version}``: the version's input CSV files."""
        return join(self.root, "raw", check_segment(version))

    def tfrecords(self, version: str) -> str:
        """``{root}/tfrecords/{version}``: the converted version (splits, manifest, commit marker)."""
        return join(self.root, "tfrecords", check_segment(version))

    def split(self, version: str, split: str) -> str:
        """``{root}/tfrecords/{version}/{split}``: the shards of one split."""
        return join(self.tfrecords(version), split)

    def lineage(self, version: str) -> str:
        """The row_id -> (file, line, split) index of a converted version (Parquet parts)."""
        return join(self.tfrecords(version), LINEAGE_DIR)

    def stats(self, version: str) -> str:
        """``{root}/tfrecords/{version}/_stats.json``: the converted version's statistics (datastats)."""
        return join(self.tfrecords(version), STATS_FILE)

    def schema(self) -> str:
        """``{root}/schema/schema.json``: the data's schema, the same for every version of the root."""
        return join(self.root, "schema", "schema.json")

    def data_checks_dir(self, version: str) -> str:
        """``{root}/data-checks/{version}``: the records and reports of the data checks on a version."""
        return join(self.root, "data-checks", check_segment(version))

    def data_checks(self, version: str, task: str) -> str:
        """``{root}/data-checks/{version}/{task}.json``: the data checks ``task`` ran on the version."""
        return join(self.data_checks_dir(version), check_segment(task, "task") + ".json")

    def data_report(self, version: str, task: str) -> str:
        """``{root}/data-checks/{version}/{task}.html``: the data report of those checks."""
        return join(self.data_checks_dir(version), check_segment(task, "task") + ".html")

    def quarantine(self, version: str) -> str:
        """``{root}/quarantine/{version}``: the rows the conversion could not convert."""
        return join(self.root, "quarantine", check_segment(version))

    def model_runs(self, version: str) -> str:
        """``{root}/models/{version}``: the training runs of a version, one directory each."""
        return join(self.root, "models", check_segment(version))

    def model_run(self, version: str, run: str) -> str:
        """``{root}/models/{version}/{run}``: one training run."""
        return join(self.model_runs(version), check_segment(run, "run id"))

    def exported_model(self, version: str, run: str) -> str:
        """The SavedModel a training run's chief exported (:data:`MODEL_DIR` of the run)."""
        return join(self.model_run(version, run), MODEL_DIR)

    def validation(self, version: str, run: str) -> str:
        """``{root}/validation/{version}/{run}``: the gate's report of a training run."""
        return join(self.root, "validation", check_segment(version), check_segment(run, "run id"))

    def validation_metrics(self, version: str, run: str) -> str:
        """``{root}/validation/{version}/{run}/metrics.json``: the gate's figures and decision."""
        return join(self.validation(version, run), METRICS_FILE)

    def serving(self) -> str:
        """``{root}/serving``: promoted models, the pointer, the history."""
        return join(self.root, "serving")

    def serving_models(self) -> str:
        """``{root}/serving/models``: every promoted SavedModel, one directory each."""
        return join(self.serving(), "models")

    def serving_model(self, model_version: str) -> str:
        """``{root}/serving/models/{model_version}``: one promoted SavedModel."""
        return join(self.serving_models(), check_segment(model_version, "model version"))

    def serving_pointer(self) -> str:
        """``{root}/serving/CURRENT.json``: which model serves."""
        return join(self.serving(), "CURRENT.json")

    def serving_history(self) -> str:
        """``{root}/serving/history``: one JSON object per serving decision."""
        return join(self.serving(), "history")

    def predictions(self, version: str) -> str:
        """``{root}/predictions/{version}``: the version's Parquet predictions."""
        return join(self.root, "predictions", check_segment(version))


def version_date(version: str | None) -> str | None:
    """``version`` itself when it is a calendar date ``YYYY-MM-DD``, else None (``mnist-v2``): the data
    date a dataset version stands for (validate's promotion policy, the data checks' previous version)."""
    import datetime
    if isinstance(version, str) and len(version) == 10:
        try:
            return datetime.date.fromisoformat(version).isoformat()
        except ValueError:
            return None
    return None


def model_version(version: str, run: str, digest: str) -> str:
    """Name under which a validated model is promoted: ``{version}__{run}__{digest[:12]}``.

    ``digest`` is the model's content digest (``serving.model_digest``: sha256, hex), so a retrained
    model always gets a new name and the same bytes always get the same one. The result is a valid
    path segment (at most 128 characters) for every valid version and run id: when the full name is
    longer, version and run are cut (together to 108 characters) and the last part becomes 16 hex
    digits of the sha256 of ``{version}__{run}__{digest}``, so distinct inputs keep distinct names.
    Raises PathError for an invalid version or run id, ValueError for a digest that is not hex.
    """
    import hashlib

    check_segment(version)
    check_segment(run, "run id")
    if not re.fullmatch(r"[0-9a-f]{12,}", str(digest)):
        raise ValueError(f"invalid model digest {digest!r}: expected at least 12 lowercase hex digits (sha256)")
    name = f"{version}__{run}__{digest[:12]}"
    if len(name) > 128:
        tag = hashlib.sha256(f"{version}__{run}__{digest}".encode()).hexdigest()[:16]
        room = 128 - 4 - len(tag)  # two "__" separators and the tag
        keep = min(len(version), max(room - len(run), room // 2))
        name = f"{version[:keep]}__{run[:room - keep]}__{tag}"
    return check_segment(name, "model version")
