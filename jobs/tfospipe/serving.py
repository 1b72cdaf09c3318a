"""The serving area: promoted models kept by version, the pointer saying which one serves, and the
history of every decision about it.

A promoted model is immutable. Its model version carries the digest of its files
(``paths.model_version``), so a retrained model, even one trained again under the same run id, gets
a new name, and ``promote`` never replaces or modifies an existing ``serving/models/<model_version>/``:
promoting the same bytes again copies nothing. Every promoted model stays, so rollback can reach any.

``serving/CURRENT.json`` is replaced by an atomic rename, and only after the model it names is
completely copied and committed, so a reader never sees a half-written model or a pointer to
nothing. Besides ``model_version`` and ``path`` it holds ``history``: the model versions that served
before, most recent first (``previous`` is its first entry). Every move of the pointer to another
model (promote, ``rollback --to``) pushes the model that served onto ``history``; a plain rollback
pops it, so repeated rollbacks walk back through the models in the order they served. The current
model is never its own ``previous``. Only the validate job promotes.

Concurrent writers. Every change of the pointer is a compare-and-swap made while holding the
pointer lock (:func:`pointer_lock`): ``promote(..., expected=X)`` moves the pointer only if it
still names ``X``, the model the candidate was compared with, and raises :class:`ChampionChanged`
otherwise (nothing is copied, nothing changes). On a local root (or a shared mount) the lock is an
``fcntl.flock`` on ``serving/.pointer.lock``, which the kernel releases when its holder dies, so a
killed job never leaves serving locked. On an object store (a ``gs://``/``s3://`` root) there is no
flock: the pointer is read again right before it is written, which narrows the window to that one
read-write; a store with conditional writes closes it by writing ``CURRENT.json`` only if its
generation/ETag is the one read (:func:`_swap` is the one place that writes the pointer).

``serving/history/`` is the append-only record of decisions: one small JSON object per event
(promote, rollback, rejected, unchanged), named ``<UTC time>-<random>.json``, so names sort by time
and concurrent writers never write the same object (no file is ever appended to or rewritten,
which object stores do not offer anyway). :func:`history` reads it back in order. A validate event
carries ``gate``: the gate rule that decided and its paired statistics (validate._gate_record), which
:func:`gate_line` puts in words.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import hashlib
import os
import sys
import time
import uuid
from typing import Iterator

from . import fs, paths

#: Bytes read per step while hashing a model file.
_CHUNK = 1 << 20
#: Actions recorded in serving/history/.
ACTIONS = ("promote", "rollback", "rejected", "unchanged")
#: Default for ``expected``: move the pointer whatever it names now (no compare-and-swap).
ANY = object()


class ChampionChanged(Exception):
    """The pointer no longer names the model a candidate was compared with.

    ``expected``: the model version the candidate was compared with (None: nothing was serving);
    ``now``: the pointer as it is (a dict, or None when nothing serves).
    """

    def __init__(self, expected: str | None, now: dict | None):
        self.expected, self.now = expected, now
        super().__init__(f"serving changed during evaluation: it was {expected or 'empty'}, "
                         f"it is now {now['model_version'] if now else 'empty'}")


def current(layout: paths.Layout) -> dict | None:
    """The pointer's content (model_version, path, previous, history, ...) or None when nothing was promoted.

    Raises OSError or ValueError when ``serving/CURRENT.json`` exists but cannot be read as JSON."""
    pointer = layout.serving_pointer()
    return fs.read_json(pointer) if fs.exists(pointer) else None


def versions(layout: paths.Layout) -> list[str]:
    """Promoted, committed model versions, sorted by name (hidden staging directories of an unfinished
    promotion are not versions, even when killed between their _SUCCESS and their rename)."""
    base = layout.serving_models()
    return [v.rstrip("/") for v in fs.listdir(base)
            if not v.startswith(".") and fs.is_committed(paths.join(base, v.rstrip("/")))]


def model_info(layout: paths.Layout, mv: str) -> dict:
    """The manifest a promoted model was committed with (digest, accuracy, dataset_version, run_id, ...).

    Raises OSError when ``mv`` has no manifest in ``serving/models/`` (never promoted, or removed),
    ValueError when it is not JSON, PathError when ``mv`` is not a valid model version."""
    return fs.read_json(paths.join(layout.serving_model(mv), fs.MANIFEST))


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


@contextlib.contextmanager
def pointer_lock(layout: paths.Layout, timeout: float = 600.0) -> Iterator[None]:
    """Hold the serving area's exclusive lock for the ``with`` block (waits up to ``timeout`` s).

    Local roots: ``fcntl.flock`` on ``serving/.pointer.lock`` (released by the kernel if the holder
    dies). URIs: no lock (see the module docstring); the pointer is re-read just before it is
    written. Raises TimeoutError naming the lock file when another holder keeps it longer.
    """
    lock = layout.serving_lock()
    if fs.scheme_of(lock).remote:
        yield
        return
    import fcntl

    fs.makedirs(layout.serving())
    fd = os.open(fs._local(lock), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"the serving lock {lock} was held by another promotion or rollback for "
                                       f"more than {timeout:.0f} s; try again when it has finished") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _event_name():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now, now.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + uuid.uuid4().hex[:12]


def record(layout: paths.Layout, action: str, event: dict,
           _stamp: tuple[datetime.datetime, str] | None = None) -> dict:
    """Write one event to ``serving/history/`` and return it (with ``time`` and ``id``).

    ``action`` is one of :data:`ACTIONS`; ``event`` holds the facts (``from``, ``to``,
    ``model_version``, ``run_id``, ``dataset_version``, ``accuracy``, ``triggered_by``...). The object
    is new (time + random name), written whole (tmp + rename locally, one upload on an object
    store): concurrent writers never collide. Raises ValueError for an unknown action.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown serving action {action!r}: use one of {', '.join(ACTIONS)}")
    now, name = _stamp or _event_name()
    event = dict(event, action=action, time=now.isoformat(), id=name)
    event.setdefault("triggered_by", triggered_by())
    fs.makedirs(history_dir(layout))
    fs.write_json_atomic(paths.join(history_dir(layout), name + ".json"), event)
    return event


def history(layout: paths.Layout, model_version: str | None = None) -> list[dict]:
    """Events of ``serving/history/``, oldest first; with ``model_version``: those naming it
    (as ``from``, ``to`` or ``model_version``). An empty list when nothing was recorded."""
    base = history_dir(layout)
    names = [n for n in fs.listdir(base) if n.endswith(".json") and not n.startswith(".")]
    events = [fs.read_json(paths.join(base, n)) for n in sorted(names)]
    if model_version is not None:
        events = [e for e in events if model_version in (e.get("from"), e.get("to"), e.get("model_version"))]
    return events


def _swap(layout, expected, pointer):
    """Write ``pointer`` as CURRENT.json if the pointer still names ``expected`` (a model version,
    None for no pointer, or ANY); the caller holds :func:`pointer_lock`. Raises ChampionChanged."""
    if expected is not ANY:
        now = current(layout)
        if (now["model_version"] if now else None) != expected:
            raise ChampionChanged(expected, now)
    fs.write_json_atomic(layout.serving_pointer(), pointer)


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


def _move(layout, action, expected, mv, info, history_, now, event):
    """Swap the pointer to ``mv`` (compare-and-swap on ``expected``), then record the event."""
    stamp = _event_name()
    pointer = _pointer(layout, mv, dict(info, action=action), history_, stamp[1])
    _swap(layout, expected, pointer)
    record(layout, action, dict(event, **{"from": now["model_version"] if now else None, "to": mv}), stamp)
    return pointer


def promote(layout: paths.Layout, model_dir: str, mv: str, info: dict, digest: str,
            expected: str | None | object = ANY, event: dict | None = None, lock_timeout: float = 600.0) -> dict:
    """Put the model of ``model_dir`` into serving as ``mv`` and point serving at it; returns the pointer.

    ``digest`` is ``model_digest(model_dir)``, from which ``mv`` was named. ``expected``: the model
    version the candidate was compared with (None: nothing served); when the pointer names another
    model by the time the lock is held, ChampionChanged is raised and nothing is copied or changed.
    ``event``: facts for the history event (run, dataset version, accuracy, rule...).

    A model version that is already committed in ``serving/models/`` is never copied again nor
    touched: its recorded digest must equal ``digest`` (else ValueError, nothing changes). A new one
    is copied into a staging directory, the copy's digest is checked against ``digest`` (ValueError
    if the files changed meanwhile, nothing is published) and committed. When ``mv`` already serves,
    the pointer is left as it is (``changed: False``, an ``unchanged`` event); otherwise the model
    that served is pushed onto ``history`` and a ``promote`` event records the move. TimeoutError
    when the lock stays held longer than ``lock_timeout`` s.
    """
    event = {**info, "model_version": mv, **(event or {})}
    with pointer_lock(layout, lock_timeout):
        target = layout.serving_model(mv)
        committed = fs.is_committed(target)
        if committed:
            recorded = model_info(layout, mv).get("digest")
            if recorded != digest:
                raise ValueError(f"{target} already holds a promoted model with digest {recorded}, not {digest}: "
                                 "a promoted model is never replaced; promote these files under their own "
                                 "model version")
        now = current(layout)
        if now and now["model_version"] == mv:
            record(layout, "unchanged", dict(event, **{"from": mv, "to": mv}))
            return dict(now, changed=False)
        if expected is not ANY and (now["model_version"] if now else None) != expected:
            raise ChampionChanged(expected, now)
        if not committed:
            with fs.Staging(target) as stage:
                fs.copytree(model_dir, stage.path)
                copied = model_digest(stage.path)
                if copied != digest:
                    raise ValueError(f"the model at {model_dir} changed while it was being promoted (digest "
                                     f"{copied}, expected {digest}): nothing was promoted; validate it again")
                stage.commit(dict(info, model_version=mv, digest=digest, source=model_dir,
                                  promoted_at=datetime.datetime.now(datetime.timezone.utc).isoformat()))
        pointer = _move(layout, "promote", expected, mv, info, _pushed(now), now, event)
    return dict(pointer, changed=True)


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
             lock_timeout: float = 600.0) -> dict:
    """Point serving at an earlier model; returns the new pointer (``from``: the model that served).

    Without ``to``: back to ``previous``, the model that served before the current one, which leaves
    ``history`` (so a second rollback goes one further back). With ``to``: at that promoted version,
    pushing the current one onto ``history`` (a plain rollback then returns to it). The move is
    made under the pointer lock and recorded as a ``rollback`` event naming ``by`` (default:
    :func:`triggered_by`). Raises ValueError when nothing is recorded to roll back to, when ``to``
    is not a committed model in ``serving/models/`` or is the one already serving.
    """
    with pointer_lock(layout, lock_timeout):
        now = current(layout)
        history_ = _history(now)
        if to is None:
            if not history_:
                raise ValueError("nothing to roll back to: no earlier serving model is recorded in "
                                 f"{layout.serving_pointer()}; name one with --to (see the list command)")
            to, history_ = history_[0], history_[1:]
        else:
            paths.check_segment(to, "model version")
            if now and now["model_version"] == to:
                raise ValueError(f"model version {to!r} is already serving: nothing to roll back")
            history_ = _pushed(now)
        if to not in versions(layout):
            raise ValueError(f"model version {to!r} is not a committed model in {layout.serving()}/models "
                             f"(have: {versions(layout)})")
        info = {k: v for k, v in model_info(layout, to).items()
                if k in ("accuracy", "dataset_version", "run_id", "digest", "report", "data_date", "examples")}
        info["from"] = now["model_version"] if now else None
        event = dict({k: v for k, v in info.items() if k != "from"}, model_version=to,
                     triggered_by=by or triggered_by())
        return _move(layout, "rollback", ANY, to, info, history_, now, event)
