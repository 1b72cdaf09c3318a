"""OpenLineage datasets and facets of the pipeline's tasks, read from what the jobs commit.

The Airflow operator and sensor (``plugins/tfos_spark.py``) implement the OpenLineage provider's
``get_openlineage_facets_on_start/complete/failure`` with :func:`task_lineage`: each task's inputs and
outputs under the data root, named by the OpenLineage dataset naming spec (:func:`dataset_name`:
namespace ``file`` and the absolute path on a local root, ``s3://<bucket>`` and the key on S3, ...):

============== ======================================= ==============================================
task           inputs                                  outputs
============== ======================================= ==============================================
wait_for_data  ``raw/<version>``                       --
convert        ``raw/<version>``                       ``tfrecords/<version>``, ``quarantine/<version>``
train          ``tfrecords/<version>``                 ``models/<version>/<run>``
validate       ``models/<version>/<run>``,             ``validation/<version>/<run>``, and
               ``tfrecords/<version>``                 ``serving/models/<model_version>`` when promoted
infer          ``tfrecords/<version>``,                ``predictions/<version>``
               ``serving/models/<model_version>``
============== ======================================= ==============================================

So a DAG run's events give the graph raw -> tfrecords -> model (the training run, then its promoted
copy) -> predictions. On start and failure the datasets are named only; on completion they carry facets
from the committed manifests: ``schema`` (the TFRecord features, the predictions' columns),
``inputStatistics`` / ``outputStatistics`` (rows, bytes, files), ``dataQualityMetrics`` (rows, the label
and pixel columns' counts, distinct classes, min and max, from ``_stats.json``), and the pipeline's own
``tfos_splits`` (rows per split), ``tfos_quarantine`` (rows quarantined, by kind), ``tfos_statistics``
(per split rows, label counts, blank and duplicate rows, the train/eval overlap), ``tfos_data_checks``
(the data checks' decision and anomalies) and ``tfos_model`` (training figures; the gate's decision).

Submit side only (the Airflow worker; never shipped to the executors: :data:`.launch.SUBMIT_ONLY`):
imports the OpenLineage client, which only the Airflow host has. No Spark or TensorFlow import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attr
from openlineage.client.event_v2 import InputDataset, OutputDataset
from openlineage.client.facet_v2 import (DatasetFacet, data_quality_metrics_dataset, input_statistics_input_dataset,
                                         output_statistics_output_dataset, schema_dataset)

from . import fs, inputs as inputs_lib, paths, schema

#: The TFRecord features of a converted version (schema.py's record format), as OpenLineage schema fields.
RECORD_FIELDS = (("label", "int64[1]", "class id (absent in the score split)"),
                 ("image", "int64[H*W]", "raw pixel values, row-major"),
                 ("row_id", "int64[1]", "stable id of the source row (the lineage index maps it to file and line)"))

#: Object-store schemes named by the scheme OpenLineage's naming spec uses.
_SPEC_SCHEMES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}


@attr.define
class SplitsFacet(DatasetFacet):
    """``tfos_splits``: rows per split of a converted version (``train``, ``eval``, ``score``)."""

    splits: dict[str, int] = attr.field(factory=dict)


@attr.define
class QuarantineFacet(DatasetFacet):
    """``tfos_quarantine``: the rows convert quarantined (``rowsQuarantined`` of ``rowsRead``), by kind."""

    rowsRead: int = 0  # noqa: N815
    rowsQuarantined: int = 0  # noqa: N815
    byKind: dict[str, int] = attr.field(factory=dict)  # noqa: N815


@attr.define
class StatisticsFacet(DatasetFacet):
    """``tfos_statistics``: per split rows, label counts, blank (all-zero) and duplicate rows, and the eval
    rows whose image is also in train (``_stats.json``, datastats.py)."""

    splits: dict[str, dict[str, Any]] = attr.field(factory=dict)
    trainEvalOverlap: int | None = None  # noqa: N815


@attr.define
class DataChecksFacet(DatasetFacet):
    """``tfos_data_checks``: what a task's data checks decided about the dataset (datachecks.py)."""

    task: str = ""
    decision: str = ""
    anomalies: int = 0
    report: str | None = None


@attr.define
class ModelFacet(DatasetFacet):
    """``tfos_model``: a model's figures: training (steps, final loss and accuracy) or the gate (model
    version, accuracy, decision and the rule that decided)."""

    figures: dict[str, Any] = attr.field(factory=dict)


def dataset_name(path: str) -> tuple[str, str]:
    """``(namespace, name)`` of a path under the data root by OpenLineage's dataset naming spec: a local
    path is ``("file", absolute path)``; ``s3://b/k`` (and ``s3a://``) is ``("s3://b", "k")``; ``gs://b/k``
    ``("gs://b", "k")``; ``hdfs://host:port/p`` ``("hdfs://host:port", "/p")``; any other URI
    ``("scheme://authority", path)``."""
    if "://" not in path or path.startswith("file://"):
        local = path[len("file://"):] if path.startswith("file://") else path
        return "file", os.path.abspath(local)
    parts = urlsplit(path)
    scheme = _SPEC_SCHEMES.get(parts.scheme, parts.scheme)
    name = parts.path if scheme == "hdfs" else parts.path.lstrip("/")
    return f"{scheme}://{parts.netloc}", name.rstrip("/") or "/"


def _read(path: str) -> dict | None:
    """The JSON at ``path``, or None when it is missing or unreadable (lineage never fails a task)."""
    try:
        return fs.read_json(path) if fs.exists(path) else None
    except (OSError, ValueError, fs.StorageError):
        return None


def _dataset(kind: type, path: str, facets: Mapping[str, Any] | None = None, **io_facets: Any) -> Any:
    namespace, name = dataset_name(path)
    extra = {"inputFacets": io_facets} if kind is InputDataset and io_facets else \
        {"outputFacets": io_facets} if io_facets else {}
    return kind(namespace=namespace, name=name, facets=dict(facets or {}), **extra)


def _record_schema(image_shape: list[int] | None) -> Any:
    pixels = f"int64[{image_shape[0] * image_shape[1]}]" if image_shape else "int64[H*W]"
    return schema_dataset.SchemaDatasetFacet(fields=[
        schema_dataset.SchemaDatasetFacetFields(name=n, type=pixels if n == "image" else t, description=d)
        for n, t, d in RECORD_FIELDS])


def _quality(stats: Mapping[str, Any]) -> Any:
    """``dataQualityMetrics`` of a version's ``_stats.json``: rows; ``label``: count, distinct classes, min,
    max; ``image``: count, all-zero images as nulls, smallest and largest pixel value."""
    splits = stats.get("splits") or {}
    rows = sum(s.get("rows", 0) for s in splits.values())
    labels = {int(k) for s in splits.values() for k, v in (s.get("label_counts") or {}).items() if v}
    features = [s.get("features") or {} for s in splits.values()]
    low = [min(f["min"]) for f in features if f.get("min")]
    high = [max(f["max"]) for f in features if f.get("max")]
    columns = {"image": data_quality_metrics_dataset.ColumnMetrics(
        count=rows, nullCount=sum(s.get("blank_rows", 0) for s in splits.values()),
        min=min(low) if low else None, max=max(high) if high else None)}
    if labels:
        labeled = sum(sum((s.get("label_counts") or {}).values()) for s in splits.values())
        columns["label"] = data_quality_metrics_dataset.ColumnMetrics(
            count=labeled, distinctCount=len(labels), min=min(labels), max=max(labels))
    return data_quality_metrics_dataset.DataQualityMetricsDatasetFacet(columnMetrics=columns, rowCount=rows)


def tfrecords_facets(layout: paths.Layout, version: str) -> dict[str, Any]:
    """The dataset facets of a converted version from its committed manifest and ``_stats.json``: schema,
    ``tfos_splits``, ``dataQualityMetrics`` and ``tfos_statistics``; {} when it was not converted."""
    manifest = _read(paths.join(layout.tfrecords(version), fs.MANIFEST))
    if manifest is None:
        return {}
    facets = {"schema": _record_schema(manifest.get("image_shape")),
              "tfos_splits": SplitsFacet(splits=dict(manifest.get("splits") or {}))}
    stats = _read(layout.stats(version))
    if stats is not None:
        facets["dataQualityMetrics"] = _quality(stats)
        facets["tfos_statistics"] = StatisticsFacet(
            splits={name: {k: s.get(k) for k in ("rows", "label_counts", "blank_rows", "duplicate_rows")}
                    for name, s in (stats.get("splits") or {}).items()},
            trainEvalOverlap=stats.get("train_eval_overlap"))
    return facets


def _shards(manifest: Mapping[str, Any], base: str) -> tuple[int, int]:
    """(files, bytes) of a conversion's shards."""
    files = [paths.join(base, split, s["file"]) for split, shards in (manifest.get("shards") or {}).items()
             for s in shards]
    size = 0
    for f in files:
        try:
            size += fs.size(f)
        except (OSError, fs.StorageError):
            pass
    return len(files), size


def _checks(layout: paths.Layout, version: str, task: str) -> dict[str, Any]:
    record = _read(layout.data_checks(version, task))
    if record is None:
        return {}
    return {"tfos_data_checks": DataChecksFacet(task=task, decision=str(record.get("decision")),
                                                anomalies=int(record.get("anomalies") or 0),
                                                report=record.get("report"))}


def task_lineage(job: str, values: Mapping[str, Any], complete: bool) -> tuple[list, list]:
    """``(inputs, outputs)``: the OpenLineage input and output datasets of task ``job`` (``wait_for_data``,
    or a job of jobspec.SPECS) for its rendered flag values ``values`` (``data_root``, ``version``,
    ``run_id``; the table of the module docstring). With ``complete`` (the task succeeded) the datasets
    carry the facets of what the job committed; otherwise they are only named (at start, or after a
    failure). Raises KeyError without ``data_root`` or ``version``, PathError for an unsafe one."""
    layout = paths.Layout(str(values["data_root"]))
    version = str(values["version"])
    run = paths.run_slug(values["run_id"]) if values.get("run_id") else None
    raw, records = layout.raw(version), layout.tfrecords(version)
    inputs, outputs = [], []
    if job == "wait_for_data":
        stats = {"inputStatistics": input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
            fileCount=len(inputs_lib.input_entries(raw)))} if complete else {}
        return [_dataset(InputDataset, raw, **stats)], []
    if job == "convert":
        manifest = _read(paths.join(records, fs.MANIFEST)) if complete else None
        if manifest is None:
            return [_dataset(InputDataset, raw)], [_dataset(OutputDataset, records),
                                                   _dataset(OutputDataset, layout.quarantine(version))]
        files, size = _shards(manifest, fs.resolve(records))
        inputs_ = manifest.get("inputs") or []
        inputs.append(_dataset(InputDataset, raw, inputStatistics=input_statistics_input_dataset.
                               InputStatisticsInputDatasetFacet(rowCount=manifest.get("rows_read"),
                                                                size=sum(i.get("bytes", 0) for i in inputs_),
                                                                fileCount=len(inputs_))))
        outputs.append(_dataset(OutputDataset, records, tfrecords_facets(layout, version),
                                outputStatistics=output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                                    rowCount=manifest.get("rows_written"), size=size, fileCount=files)))
        quarantined = int(manifest.get("rows_quarantined") or 0)
        outputs.append(_dataset(OutputDataset, layout.quarantine(version), {"tfos_quarantine": QuarantineFacet(
            rowsRead=int(manifest.get("rows_read") or 0), rowsQuarantined=quarantined,
            byKind=dict(manifest.get("quarantined_by_kind") or {}))},
            outputStatistics=output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                rowCount=quarantined)))
        return inputs, outputs
    data = dict(tfrecords_facets(layout, version), **_checks(layout, version, job)) if complete else {}
    if job == "train":
        run_dir = layout.model_run(version, run)
        manifest = _read(paths.join(run_dir, fs.MANIFEST)) if complete else None
        figures = {k: manifest.get(k) for k in ("steps_run", "final_loss", "final_accuracy", "final_eval_loss",
                                                 "final_eval_accuracy", "train_seconds")} if manifest else None
        return ([_dataset(InputDataset, records, data)],
                [_dataset(OutputDataset, run_dir, {"tfos_model": ModelFacet(figures=figures)} if figures else {})])
    if job == "validate":
        run_dir, report_dir = layout.model_run(version, run), layout.validation(version, run)
        report = _read(paths.join(report_dir, paths.METRICS_FILE)) if complete else None
        outputs.append(_dataset(OutputDataset, report_dir))
        if report is not None:
            decision = (report.get("promotion") or {}).get("decision")
            figures = {"model_version": report.get("model_version"), "model_digest": report.get("model_digest"),
                       "accuracy": (report.get("candidate") or {}).get("accuracy"),
                       "examples": (report.get("candidate") or {}).get("examples"), "decision": decision,
                       "rule": (report.get("promotion") or {}).get("rule"), "gate_passed": report.get("passed")}
            if decision == "promote":
                outputs.append(_dataset(OutputDataset, layout.serving_model(report["model_version"]),
                                        {"tfos_model": ModelFacet(figures=figures)}))
            outputs[0] = _dataset(OutputDataset, report_dir, {"tfos_model": ModelFacet(figures=figures)})
        return [_dataset(InputDataset, run_dir), _dataset(InputDataset, records, data)], outputs
    if job == "infer":
        predictions = layout.predictions(version)
        manifest = _read(paths.join(predictions, fs.MANIFEST)) if complete else None
        if manifest is not None:
            mv = manifest.get("model_version")
        else:
            pointer = _read(layout.serving_pointer()) or {}
            mv = str(values.get("model_version") or "") or pointer.get("model_version")
        inputs = [_dataset(InputDataset, records, data)]
        if mv:
            inputs.append(_dataset(InputDataset, layout.serving_model(mv)))
        if manifest is None:
            return inputs, [_dataset(OutputDataset, predictions)]
        return inputs, [_dataset(OutputDataset, predictions, {"schema": schema_dataset.SchemaDatasetFacet(fields=[
            schema_dataset.SchemaDatasetFacetFields(name=n, type=t, description=d)
            for n, t, _nullable, d in schema.PREDICTION_COLUMNS])},
            outputStatistics=output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                rowCount=manifest.get("rows_out"), fileCount=manifest.get("files")))]
    raise ValueError(f"unknown task {job!r} for lineage")
