"""The serving area: promoted models kept by version, and the pointer saying which one serves.

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
"""

import datetime
import hashlib

from . import fs, paths

_CHUNK = 1 << 20


def current(layout):
    """The pointer's content (model_version, path, previous, history, ...) or None when nothing was promoted."""
    pointer = layout.serving_pointer()
    return fs.read_json(pointer) if fs.exists(pointer) else None


def versions(layout):
    """Promoted, committed model versions, sorted by name."""
    base = paths.join(layout.serving(), "models")
    return [v.rstrip("/") for v in fs.listdir(base) if fs.is_committed(paths.join(base, v.rstrip("/")))]


def model_info(layout, mv):
    """The manifest a promoted model was committed with (digest, accuracy, dataset_version, run_id, ...)."""
    return fs.read_json(paths.join(layout.serving_model(mv), fs.MANIFEST))


def _files(root):
    """Paths relative to ``root`` of every file under it, sorted; the commit files at its top excluded."""
    import tensorflow as tf  # gfile walks local paths and URIs alike

    base = root.rstrip("/")
    found = []
    for dirpath, _dirs, names in tf.io.gfile.walk(base):
        rel = dirpath[len(base):].replace("\\", "/").strip("/")
        found += [f"{rel}/{n}" if rel else n for n in names if rel or n not in (fs.SUCCESS, fs.MANIFEST)]
    return sorted(found)


def model_digest(model_dir: str) -> str:
    """sha256 (64 hex digits) of a SavedModel directory: every file's relative path, size and bytes.

    Identical files give the identical digest wherever they lie (a training run's ``model/`` and its
    copy in the serving area); ``_SUCCESS`` and ``_manifest.json`` at the top are not part of it.
    Raises ValueError when the directory holds no file.
    """
    files = _files(model_dir)
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


def _point(layout, mv, info, history):
    """Swap the pointer to ``mv``; ``history``: the versions that served before, most recent first."""
    if history and history[0] == mv:
        raise ValueError(f"model version {mv!r} cannot be its own previous model")
    pointer = dict(info, model_version=mv, path=layout.serving_model(mv),
                   updated_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                   previous=history[0] if history else None, history=history)
    fs.write_json_atomic(layout.serving_pointer(), pointer)
    return pointer


def _history(now):
    """The versions that served before the pointer ``now`` (a pointer written without history: its previous)."""
    if not now:
        return []
    history = list(now["history"]) if "history" in now else [now["previous"]] if now.get("previous") else []
    while history and history[0] == now["model_version"]:  # never roll back onto the model that serves
        history.pop(0)
    return history


def _pushed(now):
    """History after moving the pointer from ``now`` to another model."""
    return ([now["model_version"]] + _history(now)) if now else []


def promote(layout, model_dir: str, mv: str, info: dict, digest: str) -> dict:
    """Put the model of ``model_dir`` into serving as ``mv`` and point serving at it; returns the pointer.

    ``digest`` is ``model_digest(model_dir)``, from which ``mv`` was named. A model version that is
    already committed in ``serving/models/`` is never copied again nor touched: its recorded digest
    must equal ``digest`` (else ValueError, nothing changes). A new one is copied into a staging
    directory, the copy's digest is checked against ``digest`` (ValueError if the files changed
    meanwhile, nothing is published) and committed. When ``mv`` already serves, the pointer is left
    as it is (the returned pointer has ``changed: False``); otherwise the model that served is pushed
    onto ``history``.
    """
    target = layout.serving_model(mv)
    if fs.is_committed(target):
        recorded = model_info(layout, mv).get("digest")
        if recorded != digest:
            raise ValueError(f"{target} already holds a promoted model with digest {recorded}, not {digest}: "
                             "a promoted model is never replaced; promote these files under their own model version")
    else:
        with fs.Staging(target) as stage:
            fs.copytree(model_dir, stage.path)
            copied = model_digest(stage.path)
            if copied != digest:
                raise ValueError(f"the model at {model_dir} changed while it was being promoted (digest {copied}, "
                                 f"expected {digest}): nothing was promoted; validate it again")
            stage.commit(dict(info, model_version=mv, digest=digest, source=model_dir,
                              promoted_at=datetime.datetime.now(datetime.timezone.utc).isoformat()))
    now = current(layout)
    if now and now["model_version"] == mv:
        return dict(now, changed=False)
    return dict(_point(layout, mv, dict(info, action="promote"), _pushed(now)), changed=True)


def rollback(layout, to: str | None = None) -> dict:
    """Point serving at an earlier model; returns the new pointer (``from``: the model that served).

    Without ``to``: back to ``previous``, the model that served before the current one, which leaves
    ``history`` (so a second rollback goes one further back). With ``to``: at that promoted version,
    pushing the current one onto ``history`` (a plain rollback then returns to it). Raises ValueError
    when nothing is recorded to roll back to, when ``to`` is not a committed model in
    ``serving/models/`` or is the one already serving.
    """
    now = current(layout)
    history = _history(now)
    if to is None:
        if not history:
            raise ValueError("nothing to roll back to: no earlier serving model is recorded in "
                             f"{layout.serving_pointer()}; name one with --to (see the list command)")
        to, history = history[0], history[1:]
    else:
        paths.check_segment(to, "model version")
        if now and now["model_version"] == to:
            raise ValueError(f"model version {to!r} is already serving: nothing to roll back")
        history = _pushed(now)
    if to not in versions(layout):
        raise ValueError(f"model version {to!r} is not a committed model in {layout.serving()}/models "
                         f"(have: {versions(layout)})")
    info = {k: v for k, v in model_info(layout, to).items()
            if k in ("accuracy", "dataset_version", "run_id", "digest", "report")}
    return _point(layout, to, dict(info, action="rollback", **{"from": now["model_version"] if now else None}),
                  history)
