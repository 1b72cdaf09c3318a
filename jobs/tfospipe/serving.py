"""The serving area: promoted models kept by version, the pointer saying which one serves, and the
history of every decision about it.

A promoted model is immutable. Its model version carries the digest of its files
(``paths.model_version``), so a retrained model, even one trained again under the same run id, gets
a new name, and ``promote`` never replaces or modifies an existing ``serving/models/<model_version>/``:
promoting the same bytes again copies nothing. Every promoted model stays, so rollback can reach any.

``serving/CURRENT.json`` names the serving model, and only after the model it names is completely
copied and committed, so a reader never sees a half-written model or a pointer to nothing. Besides
``model_version`` and ``path`` it holds ``history``: the model versions that served
before, most recent first (``previous`` is its first entry). Every move of the pointer to another
model (promote, ``rollback --to``) pushes the model that served onto ``history``; a plain rollback
pops it, so repeated rollbacks walk back through the models in the order they served. The current
model is never its own ``previous``. Only the validate job promotes.

Concurrent writers. Every change of the pointer is a compare-and-swap on the storage itself
(:func:`_swap`, the one place that writes it): the pointer is read with its token
(``fs.read_versioned``: the S3 ETag, the content's digest on a local root) and written back only if
it still has that token (``fs.write_if``: S3 ``If-Match: <ETag>``, or ``If-None-Match: *`` for the
first pointer; locally a rename under an ``flock`` that the kernel releases if the writer dies), so
it holds on an object store as on a local disk, with no lock to leave behind.
``promote(..., expected=X)`` moves the pointer only if it names ``X``, the model the candidate was
compared with, and raises :class:`ChampionChanged` otherwise (nothing changes); a rollback moves it
only if it is still in the state the rollback read (and, with ``expected``, the one its user saw).

``serving/history/`` is the append-only record of decisions: one small JSON object per event
(promote, rollback, rejected, unchanged), named ``<UTC time>-<random>.json``, so names sort by time
and concurrent writers never write the same object (no file is ever appended to or rewritten,
which object stores do not offer anyway); each is written create-only (``If-None-Match: *``). The
pointer carries the event of its last move (``event_record``), and every writer records it before it
moves the pointer again, so a writer killed between its swap and its history write loses no
event. :func:`history` reads it back in order. A validate event
carries ``gate``: the gate rule that decided and its paired statistics (validate._gate_record), which
:func:`gate_line` puts in words.
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import json
import os
import sys
import uuid

from . import fs, paths

#: Bytes read per step while hashing a model file.
_CHUNK = 1 << 20
#: Actions recorded in serving/history/.
ACTIONS = ("promote", "rollback", "rejected", "unchanged")
#: Default for ``expected``: move the pointer whatever it names now (no compare-and-swap).
ANY = object()


class ChampionChanged(Exception):
    """The pointer no longer names the model a candidate was compared with (or a rollback saw).

    ``expected``: the model version the caller saw serving (None: nothing was serving);
    ``now``: the pointer as it is (a dict, or None when nothing serves); ``during``: what was going on.
    """

    def __init__(self, expected: str | None, now: dict | None, during: str = "evaluation", hint: str = ""):
        self.expected, self.now = expected, now
        super().__init__(f"serving changed during {during}: it was {expected or 'empty'}, "
                         f"it is now {now['model_version'] if now else 'empty'}{hint}")


def current(layout: paths.Layout) -> dict | None:
    """The pointer's content (model_version, path, previous, history, ...) or None when nothing was promoted.

    Raises OSError or ValueError when ``serving/CURRENT.json`` exists but cannot be read as JSON."""
    return _state(layout)[0]


def _state(layout):
    """``(pointer dict or None, token)``: the pointer with the token a compare-and-swap needs."""
    data, token = fs.read_versioned(layout.serving_pointer())
    return (None, None) if data is None else (json.loads(data.decode("utf-8")), token)


def versions(layout: paths.Layout) -> list[str]:
    """Promoted, committed model versions, sorted by name (hidden attempt directories of an unfinished
    promotion are not versions, even when killed between their _SUCCESS and their publication)."""
    base = layout.serving_models()
    return [v.rstrip("/") for v in fs.listdir(base)
            if not v.startswith(".") and fs.is_committed(paths.join(base, v.rstrip("/")))]


def model_info(layout: paths.Layout, mv: str) -> dict:
    """The manifest a promoted model was committed with (digest, accuracy, dataset_version, run_id, ...).

    Raises OSError when ``mv`` has no manifest in ``serving/models/`` (never promoted, or removed),
    ValueError when it is not JSON, PathError when ``mv`` is not a valid model version."""
    return fs.read_json(paths.join(promoted_dir(layout, mv), fs.MANIFEST))


def promoted_dir(layout: paths.Layout, mv: str) -> str:
    """The directory holding the files of the promoted model ``mv`` (its published attempt,
    ``fs.resolve``): load or copy the model from here. Raises PathError for an invalid model version."""
    return fs.resolve(layout.serving_model(mv))


def history_dir(layout: paths.Layout) -> str:
    """``{root}/serving/history``: one JSON object per serving decision."""
    return layout.serving_history()


def _files(root):
    """Paths relative to ``root`` of every file under it, sorted; the commit files at its top excluded."""
    base = root.rstrip("/")
    if not fs._remote(base):
        base = fs._local(base).rstrip("/")
    found = []
    for dirpath, _dirs, names in fs.walk(base):
        rel = dirpath[len(base):].replace("\\", "/").strip("/")
        found += [f"{rel}/{n}" if rel else n for n in names if rel or n not in (fs.SUCCESS, fs.MANIFEST)]
    return sorted(found)


#: A SavedModel's ``fingerprint.pb`` (TensorFlow >= 2.12): hashes of ``saved_model.pb`` and of the
#: checkpoint, and (TensorFlow >= 2.15) a random ``uuid`` drawn at every save, so two exports of the same
#: graph and weights differ in it. Left out of :func:`model_digest`: what it hashes is in the digest already.
FINGERPRINT = "fingerprint.pb"


def model_digest(model_dir: str) -> str:
    """sha256 (64 hex digits) of a SavedModel directory: every file's relative path, size and bytes.

    Identical files give the identical digest wherever they lie (a training run's ``model/`` and its
    copy in the serving area); ``_SUCCESS``, ``_manifest.json`` and :data:`FINGERPRINT` at the top are not
    part of it, so the same graph and weights exported twice (a reproduced training) give the same digest.
    Raises ValueError when the directory holds no file.
    """
    files = [rel for rel in _files(model_dir) if rel != FINGERPRINT]
    if not files:
        raise ValueError(f"no model files under {model_dir}")
    h = hashlib.sha256()
    for rel in files:
        path = paths.join(model_dir, rel)
        h.update(f"{rel}\0{fs.size(path)}\0".encode("utf-8"))
        with fs.open_read(path) as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    return h.hexdigest()


def triggered_by() -> str:
    """Who or what acts: the Airflow task (its context variables, which Airflow exports to the
    spark-submit it runs), else the program and the user, e.g. ``serving.py by alice``."""
    env = os.environ
    if env.get("AIRFLOW_CTX_DAG_RUN_ID"):
        return (f"airflow dag {env.get('AIRFLOW_CTX_DAG_ID', '?')} run {env['AIRFLOW_CTX_DAG_RUN_ID']} "
                f"task {env.get('AIRFLOW_CTX_TASK_ID', '?')} try {env.get('AIRFLOW_CTX_TRY_NUMBER', '?')}")
    return f"{os.path.basename(sys.argv[0]) or 'python'} by {user()}"


def user() -> str:
    """The login name of this process's user (``uid N`` when it has none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _event_name():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now, now.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + uuid.uuid4().hex[:12]


def record(layout: paths.Layout, action: str, event: dict,
           _stamp: tuple[datetime.datetime, str] | None = None) -> dict:
    """Write one event to ``serving/history/`` and return it (with ``time`` and ``id``).

    ``action`` is one of :data:`ACTIONS`; ``event`` holds the facts (``from``, ``to``,
    ``model_version``, ``run_id``, ``dataset_version``, ``accuracy``, ``triggered_by``...). The object
    is new (time + random name), written whole and create-only (``fs.write_if``: ``link(2)`` locally,
    ``If-None-Match: *`` on S3): concurrent writers never collide, and an event is never rewritten.
    Raises ValueError for an unknown action.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown serving action {action!r}: use one of {', '.join(ACTIONS)}")
    now, name = _stamp or _event_name()
    event = dict(event, action=action, time=now.isoformat(), id=name)
    event.setdefault("triggered_by", triggered_by())
    _write_event(layout, event)
    return event


def _write_event(layout, event):
    """Write ``event`` as ``history/<id>.json`` unless it is there already (the same event, recorded by
    a writer that found it missing)."""
    fs.makedirs(history_dir(layout))
    data = (json.dumps(event, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
    try:
        fs.write_if(paths.join(history_dir(layout), event["id"] + ".json"), data, None)
    except fs.PreconditionFailed:
        pass  # recorded already: event ids are unique


def _recorded(layout, now):
    """Make sure the event of the pointer's last move (``now["event_record"]``) is in the history: its
    writer may have been killed between its swap and its history write."""
    if now and now.get("event_record"):
        _write_event(layout, now["event_record"])


def history(layout: paths.Layout, model_version: str | None = None) -> list[dict]:
    """Events of ``serving/history/``, oldest first; with ``model_version``: those naming it
    (as ``from``, ``to`` or ``model_version``). An empty list when nothing was recorded."""
    base = history_dir(layout)
    names = [n for n in fs.listdir(base) if n.endswith(".json") and not n.startswith(".")]
    events = [fs.read_json(paths.join(base, n)) for n in sorted(names)]
    now = current(layout)
    if now and now.get("event_record") and now["event_record"]["id"] + ".json" not in names:
        events = sorted(events + [now["event_record"]], key=lambda e: e["id"])  # its writer was killed
    if model_version is not None:
        events = [e for e in events if model_version in (e.get("from"), e.get("to"), e.get("model_version"))]
    return events


def _swap(layout, expected, pointer, token, during="evaluation", hint=""):
    """Write ``pointer`` as CURRENT.json if it still has ``token`` (read with it by :func:`_state`; None:
    no pointer yet), by one conditional write. Raises ChampionChanged (naming ``expected``, the model
    version the caller saw) when someone else moved it since."""
    data = (json.dumps(pointer, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
    try:
        fs.write_if(layout.serving_pointer(), data, token)
    except fs.PreconditionFailed:
        raise ChampionChanged(expected, current(layout), during, hint) from None


def _pointer(layout, mv, info, history_, event_id):
    """The pointer naming ``mv``; ``history_``: the versions that served before, most recent first."""
    if history_ and history_[0] == mv:
        raise ValueError(f"model version {mv!r} cannot be its own previous model")
    return dict(info, model_version=mv, path=layout.serving_model(mv),
                updated_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                previous=history_[0] if history_ else None, history=history_, event=event_id)


def _history(now):
    """The versions that served before the pointer ``now`` (a pointer written without history: its previous)."""
    if not now:
        return []
    history_ = list(now["history"]) if "history" in now else [now["previous"]] if now.get("previous") else []
    while history_ and history_[0] == now["model_version"]:  # never roll back onto the model that serves
        history_.pop(0)
    return history_


def _pushed(now):
    """History after moving the pointer from ``now`` to another model."""
    return ([now["model_version"]] + _history(now)) if now else []


def _move(layout, action, mv, info, history_, now, token, event, during="evaluation", hint=""):
    """Swap the pointer from ``now`` (read with ``token``) to ``mv``, then record the event (which the
    pointer carries, so the next writer records it if this one is killed first)."""
    now_mv = now["model_version"] if now else None
    stamp = _event_name()
    record_ = dict(event, **{"from": now_mv, "to": mv}, action=action, time=stamp[0].isoformat(), id=stamp[1])
    record_.setdefault("triggered_by", triggered_by())
    pointer = _pointer(layout, mv, dict(info, action=action), history_, stamp[1])
    pointer["event_record"] = record_
    _recorded(layout, now)
    _swap(layout, now_mv, pointer, token, during, hint)
    _write_event(layout, record_)
    return pointer


def promote(layout: paths.Layout, model_dir: str, mv: str, info: dict, digest: str,
            expected: str | None | object = ANY, event: dict | None = None) -> dict:
    """Put the model of ``model_dir`` into serving as ``mv`` and point serving at it; returns the pointer.

    ``digest`` is ``model_digest(model_dir)``, from which ``mv`` was named. ``expected``: the model
    version the candidate was compared with (None: nothing served); when the pointer names another
    model, or another writer moves it before this one's conditional write lands, ChampionChanged is
    raised and the pointer is not changed by this call (with ``ANY``: read again and retried).
    ``event``: facts for the history event (run, dataset version, accuracy, rule...).

    A model version that is already committed in ``serving/models/`` is never copied again nor
    touched: its recorded digest must equal ``digest`` (else ValueError, nothing changes). A new one
    is copied into an attempt directory of its own, the copy's digest is checked against ``digest``
    (ValueError if the files changed meanwhile, nothing is published) and published create-only
    (``fs.Staging``). When ``mv`` already serves, the pointer is left as it is (``changed: False``, an
    ``unchanged`` event); otherwise the model that served is pushed onto ``history`` and a ``promote``
    event records the move.
    """
    event = {**info, "model_version": mv, **(event or {})}
    target = layout.serving_model(mv)
    _check_promoted(layout, target, mv, digest)
    for _ in range(100):
        now, token = _state(layout)
        if now and now["model_version"] == mv:
            record(layout, "unchanged", dict(event, **{"from": mv, "to": mv}))
            return dict(now, changed=False)
        if expected is not ANY and (now["model_version"] if now else None) != expected:
            raise ChampionChanged(expected, now)
        _publish_model(layout, target, model_dir, mv, info, digest)
        try:
            pointer = _move(layout, "promote", mv, info, _pushed(now), now, token, event)
        except ChampionChanged:
            if expected is ANY:
                continue
            raise
        return dict(pointer, changed=True)
    raise ChampionChanged(None, current(layout), "promotion", ": 100 other writers moved it first")


def _check_promoted(layout, target, mv, digest):
    """Whether ``mv`` is promoted already; ValueError when it is, with other files than ``digest``."""
    if not fs.is_committed(target):
        return False
    recorded = model_info(layout, mv).get("digest")
    if recorded != digest:
        raise ValueError(f"{target} already holds a promoted model with digest {recorded}, not {digest}: "
                         "a promoted model is never replaced; promote these files under their own "
                         "model version")
    return True


def _publish_model(layout, target, model_dir, mv, info, digest):
    """Copy the model into ``serving/models/<mv>`` unless it is there (with the same digest)."""
    if _check_promoted(layout, target, mv, digest):
        return
    try:
        with fs.Staging(target, once=True) as stage:
            fs.copytree(model_dir, stage.path)
            copied = model_digest(stage.path)
            if copied != digest:
                raise ValueError(f"the model at {model_dir} changed while it was being promoted (digest "
                                 f"{copied}, expected {digest}): nothing was promoted; validate it again")
            stage.commit(dict(info, model_version=mv, digest=digest, source=model_dir,
                              promoted_at=datetime.datetime.now(datetime.timezone.utc).isoformat()))
    except fs.CommitConflict:
        _publish_model(layout, target, model_dir, mv, info, digest)  # another promoter of the same files won


def gate_line(gate: dict | None) -> str:
    """One line of a validate event's ``gate`` record (validate._gate_record): the rule that decided, then,
    when a serving model was compared, the discordant counts (b: only the candidate right, c: only the
    serving model), the one-sided p-values and the accuracy difference with its 95% paired interval.
    Empty for None (an event recorded before the gate kept its statistics)."""
    if not gate:
        return ""
    line = str(gate.get("decided_by", ""))
    if "cand_only" in gate:
        low, high = gate["difference_interval"]
        line += (f" | b={gate['cand_only']} c={gate['serving_only']}, p(worse)={gate['p_serving_better']:.3g} "
                 f"p(better)={gate['p_candidate_better']:.3g}, difference {gate['difference']:+.4f} "
                 f"[{low:+.4f}, {high:+.4f}]")
        if gate.get("lost_classes"):
            line += f", lost classes {', '.join(gate['lost_classes'])}"
    return line


def reject(layout: paths.Layout, mv: str, event: dict) -> dict:
    """Record that ``mv`` was judged and not promoted (gate failed or the promotion policy held it);
    ``from``/``to`` name the model serving, which stays. Returns the event."""
    now = current(layout)
    serving = now["model_version"] if now else None
    return record(layout, "rejected", dict(event, model_version=mv, **{"from": serving, "to": serving}))


def rollback(layout: paths.Layout, to: str | None = None, by: str | None = None,
             expected: str | None | object = ANY) -> dict:
    """Point serving at an earlier model; returns the new pointer (``from``: the model that served).

    Without ``to``: back to ``previous``, the model that served before the current one, which leaves
    ``history`` (so a second rollback goes one further back). With ``to``: at that promoted version,
    pushing the current one onto ``history`` (a plain rollback then returns to it). ``expected``: the
    model version the user saw serving (``scripts/serving.py rollback --expect``); the rollback is a
    compare-and-swap on the pointer state it read (and, with ``expected``, that state must name it), so
    it never undoes a promotion it did not see. The move is recorded as a ``rollback`` event naming
    ``by`` (default: :func:`triggered_by`) and ``from``, the model it saw serving.

    Raises ChampionChanged when the pointer is not ``expected`` or was moved by someone else after it
    was read (nothing changes: look again and rerun); ValueError when nothing is recorded to roll back
    to, when ``to`` is not a committed model in ``serving/models/`` or is the one already serving.
    """
    hint = "; nothing was rolled back: check what serves now (scripts/serving.py list) and run the rollback again"
    now, token = _state(layout)
    now_mv = now["model_version"] if now else None
    if expected is not ANY and now_mv != expected:
        raise ChampionChanged(expected, now, "the rollback", hint)
    history_ = _history(now)
    if to is None:
        if not history_:
            raise ValueError("nothing to roll back to: no earlier serving model is recorded in "
                             f"{layout.serving_pointer()}; name one with --to (see the list command)")
        to, history_ = history_[0], history_[1:]
    else:
        paths.check_segment(to, "model version")
        if now_mv == to:
            raise ValueError(f"model version {to!r} is already serving: nothing to roll back")
        history_ = _pushed(now)
    if to not in versions(layout):
        raise ValueError(f"model version {to!r} is not a committed model in {layout.serving()}/models "
                         f"(have: {versions(layout)})")
    info = {k: v for k, v in model_info(layout, to).items()
            if k in ("accuracy", "dataset_version", "run_id", "digest", "report", "data_date", "examples")}
    info["from"] = now_mv
    event = dict({k: v for k, v in info.items() if k != "from"}, model_version=to,
                 triggered_by=by or triggered_by())
    return _move(layout, "rollback", to, info, history_, now, token, event, "the rollback", hint)
