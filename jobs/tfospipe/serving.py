"""The serving area: promoted models kept by version, and the pointer saying which one serves.

``serving/CURRENT.json`` is replaced by an atomic rename, and only after the model it names is
completely copied and committed, so a reader never sees a half-written model or a pointer to
nothing. Only the validate job promotes; ``rollback`` points back at an earlier promoted model.
"""

import datetime

from . import fs, paths


def current(layout):
    """The pointer's content (model_version, path, ...) or None when nothing was promoted yet."""
    pointer = layout.serving_pointer()
    return fs.read_json(pointer) if fs.exists(pointer) else None


def versions(layout):
    """Promoted, committed model versions, oldest first by name."""
    base = paths.join(layout.serving(), "models")
    return [v.rstrip("/") for v in fs.listdir(base) if fs.is_committed(paths.join(base, v.rstrip("/")))]


def _point(layout, mv, info):
    previous = current(layout)
    pointer = dict(info, model_version=mv, path=layout.serving_model(mv),
                   updated_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                   previous=previous["model_version"] if previous else None)
    fs.write_json_atomic(layout.serving_pointer(), pointer)
    return pointer


def promote(layout, model_dir, mv, info):
    """Copy ``model_dir`` into the serving area as ``mv`` (committed), then swap the pointer to it."""
    with fs.Staging(layout.serving_model(mv)) as stage:
        fs.copytree(model_dir, stage.path)
        stage.commit(dict(info, model_version=mv, source=model_dir))
    return _point(layout, mv, dict(info, action="promote"))


def rollback(layout, to=None):
    """Point serving at ``to`` (a promoted version) or, by default, at the one before the current."""
    now = current(layout)
    if to is None:
        if not now or not now.get("previous"):
            raise ValueError("nothing to roll back to: no earlier promoted model is recorded")
        to = now["previous"]
    if to not in versions(layout):
        raise ValueError(f"model version {to!r} is not a committed model in {layout.serving()}/models "
                         f"(have: {versions(layout)})")
    return _point(layout, to, {"action": "rollback"})
