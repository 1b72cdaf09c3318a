"""Airflow UI plugin: the validation reports, served by the Airflow API server under ``/tfos``.

``GET /tfos/reports/{version}/{run}/`` renders ``{data_root}/validation/{version}/{run}/report.md``
as HTML with its confusion-matrix PNG, followed by the serving history of the model it judged (every
promotion, rollback, rejection of it, from ``serving/history/``); the ``validate`` task's "Validation report" link points here
(see ``tfos_spark.ValidationReportLink``). ``GET /tfos/data-checks/{version}/{task}`` serves the data
report of a task's data checks (``tfos_spark.DataReportLink`` on train, validate and infer).
``GET /tfos/runs/{dag_id}/{run_id}/`` lists one DAG run's reports: the "Validation report" tab of a run's page
in the UI (the plugin's external view). Only signed-in Airflow users can read it. The data root is
the same Airflow Variable the tasks use (``tfos_data_root``), so a report on any filesystem the
jobs write to (local, HDFS, GCS, S3, Azure: through tfospipe.fs) is readable.
"""

import html
import json
import re

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response
from tfos_spark import DEFAULT_DATA_ROOT, readable_refusal
from tfospipe import fs, paths, serving

try:  # signed-in users only (the UI's session cookie or a bearer token)
    from airflow.api_fastapi.core_api.security import get_user
    _signed_in = [Depends(get_user)]
except ImportError:  # pragma: no cover - not in an API server
    _signed_in = []

app = FastAPI(title="TFoS pipeline reports", dependencies=_signed_in)


def _layout():
    from airflow.models import Variable
    return paths.Layout(Variable.get("tfos_data_root", default_var=DEFAULT_DATA_ROOT))


def _report_dir(version, run):
    try:
        return _layout().validation(version, run)  # checks both are safe path segments
    except paths.PathError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None


_COLUMNS = ("time", "action", "from", "to", "run_id", "dataset_version", "accuracy", "eval_data", "rule",
            "gate", "triggered_by")


def history_html(layout: paths.Layout, model_version: str) -> str:
    """HTML section: the serving history events naming ``model_version`` (oldest first, from
    ``serving/history/`` under ``layout``), as a table; every value HTML-escaped, floats to 4 places."""
    e = html.escape
    events = serving.history(layout, model_version)
    head = f"<h2>Serving history of <code>{e(model_version)}</code></h2>"
    if not events:
        return head + "<p>No serving decision recorded for this model.</p>"
    rows = []
    for ev in events:
        cells = []
        for key in _COLUMNS:
            value = ev.get(key)
            if key == "gate":
                text = serving.gate_line(value)  # the gate rule, discordant counts, p-values, interval
            else:
                text = f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)
            cells.append(f"<td>{e(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (head + "<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in _COLUMNS) + "</tr>"
            + "".join(rows) + "</table>")


def _read(path):
    if not fs.exists(path):
        raise HTTPException(status_code=404, detail=f"no validation report at {path} (has validate run?)")
    return fs.read_bytes(path)


def report_body(layout: paths.Layout, version: str, run: str) -> str:
    """The HTML body of the validation report of dataset ``version`` and training run ``run`` (its folder
    name) under ``layout``: ``report.md`` rendered, then the serving history of the model it judged.

    HTTPException 404 when the run has no report."""
    import markdown
    report_dir = layout.validation(version, run)
    text = _read(paths.join(report_dir, paths.REPORT_FILE))
    body = markdown.markdown(text.decode("utf-8"), extensions=["tables"])
    metrics_path = paths.join(report_dir, paths.METRICS_FILE)
    if fs.exists(metrics_path):
        body += history_html(layout, fs.read_json(metrics_path)["model_version"])
    return body


def _page(title: str, body: str) -> str:
    """A whole HTML page in the reports' style (:data:`REPORT_CSS`), with a link back to the DAG in the UI
    (``target=_top``: inside the UI's iframe it leaves the frame)."""
    back = html.escape(f"{_ui_base()}/dags/tfos_pipeline")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<style>{REPORT_CSS}</style></head>"
            f"<body><p><a href='{back}' target='_top'>&larr; tfos_pipeline in the Airflow UI</a></p>{body}"
            "</body></html>")


@app.get("/reports/{version}/{run}/", response_class=HTMLResponse)
def report(version: str, run: str) -> str:
    """The validation report of dataset ``version`` and training run ``run`` (its path segment) as an
    HTML page (:func:`report_body`).

    HTTP 400 when ``version`` or ``run`` is no safe path segment, 404 when the run has no report."""
    try:
        body = report_body(_layout(), version, run)
    except paths.PathError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None
    return _page(f"Validation {version} / {run}", body)


#: The report's style: it fits a 1280 px window (and narrower ones): the text column is at most 72em and
#: never wider than the window; a table wider than the column scrolls inside itself, long cells (model
#: versions, gate lines) wrap, and images shrink to the column.
REPORT_CSS = ("*{box-sizing:border-box}body{font-family:sans-serif;max-width:min(72em,100%);margin:1em auto;padding:0 1em}"
              "table{border-collapse:collapse;display:block;max-width:100%;overflow-x:auto}"
              "td,th{border:1px solid #ccc;padding:.2em .6em;overflow-wrap:anywhere}"
              "code,pre{white-space:pre-wrap;overflow-wrap:anywhere}img{max-width:100%;height:auto}")


def _ui_base() -> str:
    from airflow.configuration import conf
    return conf.get("api", "base_url", fallback="").rstrip("/")


@app.get("/reports/{version}/{run}/confusion_matrix.png")
def confusion_matrix(version: str, run: str) -> Response:
    """The report's ``confusion_matrix.png`` (image/png); HTTP 400 / 404 as :func:`report`."""
    return Response(_read(paths.join(_report_dir(version, run), paths.CONFUSION_FILE)), media_type="image/png")


@app.get("/data-checks/{version}/{task}", response_class=HTMLResponse)
def data_report(version: str, task: str) -> str:
    """The data report (``data-checks/{version}/{task}.html``, datagate) of a task's data checks.

    HTTP 400 when ``version`` or ``task`` is no safe path segment, 404 when the task wrote no report
    (its data checks were off, or it has not run)."""
    try:
        path = _layout().data_report(version, task)
    except paths.PathError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None
    if not fs.exists(path):
        raise HTTPException(status_code=404, detail=f"no data report at {path} (data checks off, or the task has "
                                                    "not run)")
    return fs.read_bytes(path).decode("utf-8")


def run_reports_html(layout: paths.Layout, run_id: str) -> str:
    """HTML page: the reports of one DAG run of the pipeline, for the "Validation report" tab of a DAG run in
    Airflow's UI (the plugin's external view; Airflow shows it in an iframe inside the run's page, so the report
    never replaces the UI). The run's training folder name is ``paths.run_slug(run_id)``; its dataset version is
    the one ``validation/*/<slug>/`` exists under. For each such version (one, for a run of the DAG): links to
    the data reports its tasks wrote, then its validation report (:func:`report_body`); or one sentence when the
    run has none yet. Raises paths.PathError for a run id that makes no folder name."""
    e = html.escape
    slug = paths.run_slug(run_id)
    versions = sorted({p.rstrip("/").split("/")[-2]
                       for p in fs.glob(paths.join(layout.root, "validation", "*", slug))})
    parts = []
    for version in versions:
        links = [f"<a href='../../../data-checks/{e(version)}/{task}'>data report of {task}</a>"
                 for task in ("train", "validate", "infer") if fs.exists(layout.data_report(version, task))]
        parts.append(f"<p>Dataset version <code>{e(version)}</code>" + (f": {', '.join(links)}" if links else "")
                     + "</p>")
        try:
            # the report's image beside it, as the report's own page serves it
            parts.append(report_body(layout, version, slug).replace(
                f'src="{paths.CONFUSION_FILE}"', f'src="../../../reports/{e(version)}/{e(slug)}/{paths.CONFUSION_FILE}"'))
        except HTTPException:  # validate has begun but not committed its report
            parts.append("<p>No validation report yet.</p>")
    body = "".join(parts) or ("<p>This run has no validation report yet: its validate task has not run, or "
                              "ended before it wrote one (see the task's log).</p>")
    return _page(f"Reports of {run_id}", f"<h1>Reports of run <code>{e(run_id)}</code></h1>{body}")


@app.get("/runs/{dag_id}/{run_id}/", response_class=HTMLResponse)
def run_reports(dag_id: str, run_id: str) -> str:
    """:func:`run_reports_html` of run ``run_id`` (``dag_id`` is the UI's; the reports are the pipeline's).

    HTTP 400 when the run id makes no folder name."""
    try:
        return run_reports_html(_layout(), run_id)
    except paths.PathError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None


#: The REST call by which the UI's trigger form (and any client) creates a run of the pipeline's DAG.
TRIGGER_PATH = re.compile(r"^/api/v2/dags/tfos_pipeline/dagRuns/?$")


class ReadableParamRefusals:
    """ASGI middleware of the API server: when Airflow refuses to trigger ``tfos_pipeline`` because a param
    is invalid (HTTP 400 ``Invalid input for param ...``, jsonschema's message with the schema dumped), the
    400's ``detail`` becomes one plain sentence naming the param, the value and its valid range and unit
    (tfos_spark.readable_refusal), which the trigger form shows. The validation itself stays Airflow's
    (the params' JSON schemas); every other response passes through untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or not TRIGGER_PATH.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        held = {}
        chunks = []

        async def send_readable(message):
            if message["type"] == "http.response.start":
                if message["status"] != 400:
                    held["through"] = True
                    await send(message)
                else:
                    held["start"] = message
                return
            if held.get("through") or "start" not in held or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            body = _readable_body(body)
            start = held["start"]
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send(dict(start, headers=headers))
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_readable)


def _readable_body(body: bytes) -> bytes:
    """A 400 body with its ``detail`` made readable (:func:`tfos_spark.readable_refusal`), or ``body`` as it was."""
    try:
        payload = json.loads(body)
        sentence = readable_refusal(payload.get("detail")) if isinstance(payload.get("detail"), str) else None
    except (ValueError, AttributeError):
        return body
    if sentence is None:
        return body
    return json.dumps(dict(payload, detail=sentence)).encode()


class TFoSUIPlugin(AirflowPlugin):
    name = "tfos_ui"
    fastapi_apps = [{"app": app, "url_prefix": "/tfos", "name": "TFoS pipeline reports"}]
    #: A "Validation report" tab on every DAG run's page: Airflow 3's UI opens an extra link of its own origin
    #: (the validate task's "Validation report") in the same tab (it compares the link's origin with its own),
    #: so the run's reports are also shown inside the UI, in an iframe of this tab (``{DAG_ID}``/``{RUN_ID}``
    #: are filled in by the UI).
    external_views = [{"name": "Validation report", "href": "/tfos/runs/{DAG_ID}/{RUN_ID}/",
                       "destination": "dag_run", "url_route": "validation-report"}]
    fastapi_root_middlewares = [{"middleware": ReadableParamRefusals, "args": [], "kwargs": {},
                                 "name": "tfos_pipeline readable param refusals"}]
