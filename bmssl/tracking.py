"""Experiment tracking for those who keep one: ``tracker=none|tensorboard|mlflow``.

A trainer (:class:`bmssl.trainer.Trainer`) makes one :class:`Tracker` per ``fit`` on rank 0
(:func:`make_tracker`) and calls it at fixed points: :meth:`Tracker.log_params` once with the
resolved config, :meth:`Tracker.log_metrics` with each row it writes to ``metrics.csv``,
:meth:`Tracker.log_artifacts` with the run's small record files at each checkpoint, and
:meth:`Tracker.close` at the end. The run folder's own record (``metrics.csv``,
``history.json``, ``provenance.json``) is written whatever the tracker.

- ``none`` (default): no tracker;
- ``tensorboard``: events under ``<run>/tb/`` (``torch.utils.tensorboard`` or ``tensorboardX``);
- ``mlflow``: one MLflow run per run folder, in the experiment named after the method, at
  ``tracking_uri`` (default: ``$MLFLOW_TRACKING_URI``, else the SQLite store ``mlflow.db`` of the
  working directory, MLflow's own default, with artefacts beside it in ``mlartifacts/``). A
  resumed run continues its MLflow run (``<run>/tracking.json`` keeps its id).

MLflow is an optional extra (``pip install 'bmssl-harness[track]'``), imported only when asked
for; without it ``tracker=mlflow`` is refused with one line (exit 2). Searches log through Ray
Tune's MLflow callback instead (:func:`tune_callbacks`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bmssl.errors import UserError, check_choice

TRACKERS = ("none", "tensorboard", "mlflow")
INSTALL_HINT = "pip install 'bmssl-harness[track]' (or pip install mlflow)"
#: the file in a run folder that names its MLflow run, so a resume continues it
RECORD_FILE = "tracking.json"
#: MLflow's limits on a parameter's key and value, and on a batch
_KEY_LIMIT, _VALUE_LIMIT, _PARAMS_PER_BATCH, _METRICS_PER_BATCH = 250, 6000, 100, 1000


def check_tracker(tracker: str, tracking_uri: str | None = None) -> None:
    """Raise :class:`UserError` for an unknown tracker or one whose library is not installed."""
    check_choice("tracker", tracker, TRACKERS)
    if tracking_uri is not None and (not isinstance(tracking_uri, str) or not tracking_uri.strip()):
        raise UserError(f"tracking_uri must be a URI or a path, got {tracking_uri!r}")
    if tracker == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise UserError(f"tracker=mlflow needs MLflow, which is not installed: {INSTALL_HINT}")
    if tracker == "tensorboard" and not (
        importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    ):
        raise UserError(
            "tracker=tensorboard needs tensorboard or tensorboardX: pip install tensorboard"
        )


class Tracker:
    """The interface a trainer calls; this base class records nothing (``tracker=none``)."""

    kind = "none"

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The run's resolved config (nested mappings are flattened to dotted names)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalars at ``step`` (non-finite values are left out)."""

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """Files of the run (those that exist)."""

    def close(self, status: str = "FINISHED") -> None:
        """End the run: ``FINISHED``, ``FAILED`` or ``KILLED``."""


class TensorBoardTracker(Tracker):
    kind = "tensorboard"

    def __init__(self, directory: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            try:
                from tensorboardX import SummaryWriter  # type: ignore[no-redef]
            except ImportError:
                check_tracker("tensorboard")  # raises the one-line error
                raise
        self.writer = SummaryWriter(str(directory))

    def log_params(self, params: Mapping[str, Any]) -> None:
        text = json.dumps(flat_params(params), indent=1, default=str)
        self.writer.add_text("config", f"```\n{text}\n```", 0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in finite(metrics).items():
            self.writer.add_scalar(key, value, step)

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries (booleans excluded), as floats."""
    return {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


# -- MLflow -------------------------------------------------------------------------------------


def default_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (MLflow's own default)."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    )


def resolve_uri(uri: str | None) -> str:
    """A tracking URI: given ones as they are, except a plain path, which names a SQLite file
    (``runs/mlflow.db``) or a folder holding one (``runs/`` -> ``runs/mlflow.db``)."""
    if uri is None:
        return default_uri()
    if "://" in uri or uri.startswith(("databricks", "file:")):
        return uri
    path = Path(uri).expanduser().resolve()
    if path.suffix not in (".db", ".sqlite", ".sqlite3"):
        path = path / "mlflow.db"
    return f"sqlite:///{path}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a SQLite store (MLflow creates its tables then; two table
    workers creating them at once would collide)."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise UserError(
            f"tracker=mlflow needs MLflow, which is not installed: {INSTALL_HINT}"
        ) from None
    return mlflow


def mlflow_client(uri: str) -> Any:
    mlflow = _import_mlflow()
    with _store_lock(uri):
        return mlflow.tracking.MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of MLflow experiment ``name`` at ``uri``, created if missing (a SQLite store's
    artefacts then go to ``mlartifacts/<name>`` beside the database, not into the working
    directory)."""
    with _store_lock(uri):
        client = _import_mlflow().tracking.MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        db = _sqlite_path(uri)
        location = (db.parent / "mlartifacts" / _safe_name(name)).as_uri() if db else None
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except Exception:  # created by another process meanwhile
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "experiment"


def _metric_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)


class MLflowTracker(Tracker):
    """One MLflow run of a run folder (continued on resume)."""

    kind = "mlflow"

    def __init__(
        self, out_dir: Path | None, experiment: str, run_name: str, uri: str | None = None
    ) -> None:
        _import_mlflow()  # the one-line error when MLflow is missing
        from mlflow.entities import RunStatus

        self.uri = resolve_uri(uri)
        self.client = mlflow_client(self.uri)
        self.record = out_dir / RECORD_FILE if out_dir is not None else None
        self.run_id = self._resumed_run()
        if self.run_id is None:
            experiment_id = ensure_experiment(self.uri, experiment)
            tags = {"mlflow.runName": run_name}
            if out_dir is not None:
                tags["bmssl.run_dir"] = str(out_dir.resolve())
            self.run_id = self.client.create_run(
                experiment_id, run_name=run_name, tags=tags
            ).info.run_id
        else:
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        if self.record is not None:
            from bmssl.io import write_json

            write_json(
                self.record, {"tracker": "mlflow", "tracking_uri": self.uri, "run_id": self.run_id}
            )

    def _resumed_run(self) -> str | None:
        if self.record is None or not self.record.is_file():
            return None
        try:
            stored = json.loads(self.record.read_text())
            if stored.get("tracking_uri") != self.uri:
                return None
            run = self.client.get_run(stored["run_id"])
        except Exception:  # noqa: BLE001 - a record of another store or a deleted run: start anew
            return None
        return str(run.info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [
            Param(key[:_KEY_LIMIT], _param_text(value)[:_VALUE_LIMIT])
            for key, value in flat_params(params).items()
            if key[:_KEY_LIMIT] not in existing  # a resumed run keeps its first values
        ]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [Metric(_metric_name(k), v, stamp, int(step)) for k, v in finite(metrics).items()]
        for start in range(0, len(items), _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start : start + _METRICS_PER_BATCH])

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        for path in paths:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def make_tracker(
    kind: str,
    out_dir: Path | None,
    *,
    experiment: str,
    run_name: str,
    uri: str | None = None,
) -> Tracker:
    """The tracker ``kind`` names for the run in ``out_dir`` (TensorBoard needs a folder)."""
    check_tracker(kind, uri)
    if kind == "tensorboard" and out_dir is not None:
        return TensorBoardTracker(out_dir / "tb")
    if kind == "mlflow":
        return MLflowTracker(out_dir, experiment, run_name, uri)
    return Tracker()


def run_name_of(out_dir: Path | None, method: str) -> str:
    """A readable MLflow run name: the run folder's last three parts (``simclr/digits/seed0``)."""
    if out_dir is None:
        return method
    parts = out_dir.resolve().parts
    return "/".join(parts[-3:]) if len(parts) >= 3 else str(out_dir)


# -- searches -----------------------------------------------------------------------------------


def tune_callbacks(tracker: str, uri: str | None, experiment: str) -> list[Any]:
    """Ray Tune callbacks that track every trial of a search: for ``mlflow``, Ray's
    ``MLflowLoggerCallback`` (each trial an MLflow run with its config, reported metrics and
    trial folder as artefacts) into experiment ``experiment`` at ``uri``; nothing for the
    others (Tune writes TensorBoard events of every trial itself)."""
    check_tracker(tracker, uri)
    if tracker != "mlflow":
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    resolved = resolve_uri(uri)
    ensure_experiment(resolved, experiment)
    return [
        MLflowLoggerCallback(tracking_uri=resolved, experiment_name=experiment, save_artifact=True)
    ]
