"""The training-loop driver every method shares: progress bar, periodic validation, the run
record, checkpoints and exact resume.

A method subclasses :class:`Trainer` and supplies ``train_step``, ``validate``, ``state_dict``
and ``load_state_dict``, and the network it pre-trains: ``backbone()`` from a live trainer,
``backbone_from_state(config, state)`` from a saved ``state_dict`` (what :func:`load_trained`
and ``python -m bmssl eval|export`` use). Registries build a trainer with
``from_config(config, out_dir, progress)``: the constructor, unless the trainer takes more than
a config (BiSSL's takes its data and encoders from the pipeline). ``fit`` then runs
``config.steps`` steps and keeps the run record in ``out_dir``:

- ``metrics.csv`` (rewritten at each validation): every ``config.log_every`` steps a row of the
  training logs averaged over the interval (not the last step's), plus the validation metrics on
  validation rows;
- ``provenance.json`` (:mod:`bmssl.provenance`: code, software, machine, settings, data
  fingerprint), written at the run's first start, with one entry per ``fit`` session appended
  at its end (steps, wall time, the commit it ran);
- with ``config.tracker`` (:mod:`bmssl.tracking`): TensorBoard events under ``tb/``, or an
  MLflow run (parameters, every ``metrics.csv`` row, the record files as artefacts);
- every ``config.eval_every`` steps (and at the last step): validation, ``history.json``, an
  atomic ``checkpoints/last.pt`` (model, optimiser, step, RNG state, record) and, when the
  validation accuracy is the best so far, ``checkpoints/best.pt``; then
  ``on_eval(step, metrics, checkpoint_path)``.

A trainer made on an ``out_dir`` that holds ``last.pt`` resumes from it, and a resumed CPU run
ends with the same weights and record as an uninterrupted one.

Under ``torchrun`` (a process group, :mod:`bmssl.distributed`) every rank runs ``fit``; a trainer
with ``data_parallel = True`` splits each step's global batch across them. Only rank 0 writes
(run lock, checkpoints, ``history.json``, ``metrics.csv``, provenance, tracker), shows progress and calls
``on_eval``; every rank resumes from rank 0's ``last.pt``. Every rank validates and keeps rank
0's metrics, so all make the same checkpoint calls; few-shot validation
(:class:`bmssl.pretrain.FewShotValidation`) splits the embedding of the val set across them.

Contract for searches (``tuning``): metrics always carry ``"val_acc"`` (higher is better) and
``"step"``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bmssl import distributed
from bmssl.checkpoints import load_checkpoint, save_checkpoint, seed_everything
from bmssl.errors import NonFiniteLossError, UserError
from bmssl.io import atomic_link, write_json, write_text
from bmssl.precision import configure_device

DEFAULT_LOG_EVERY = 10


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda[:N]"``.

    Under ``torchrun`` (``LOCAL_RANK`` set) ``auto`` and ``cuda`` are ``cuda:LOCAL_RANK``, one GPU
    per process; ``cuda:N`` with several processes is refused (they would share one GPU).
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"device={name!r} is not supported; use auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name!r} was asked for but CUDA is not available; use device=cpu")
    local = distributed.local_rank()
    if name == "cuda" and local is not None:
        visible = torch.cuda.device_count()
        if local >= visible:
            raise UserError(
                f"LOCAL_RANK={local} but only {visible} GPU(s) are visible; launch at most "
                f"--nproc_per_node {visible}"
            )
        return torch.device("cuda", local)
    world = distributed.launched_world()
    if name.startswith("cuda:") and world > 1:
        raise UserError(
            f"device={name} would put all {world} torchrun processes on one GPU; use "
            "device=auto or device=cuda (process r trains on cuda:LOCAL_RANK)"
        )
    return torch.device(name)


EvalCallback = Callable[[int, dict[str, float], "Path | None"], None]


class RunRecord:
    """Averaged training logs per interval, as rows for ``metrics.csv`` (and TensorBoard)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._count = 0

    def add(self, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._count += 1

    def close_interval(self, step: int, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Row of the means since the last row (plus ``extra``, e.g. validation metrics)."""
        row = {"step": float(step)}
        row.update({k: v / max(1, self._count) for k, v in self._sums.items()})
        row.update(extra or {})
        self.rows.append(row)
        self._sums, self._count = {}, 0
        return row

    @property
    def pending(self) -> bool:
        return self._count > 0

    def csv_text(self) -> str:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "sums": self._sums, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state.get("rows", [])]
        self._sums = dict(state.get("sums", {}))
        self._count = int(state.get("count", 0))


#: the run folder's provenance record (:mod:`bmssl.provenance`)
PROVENANCE_FILE = "provenance.json"
#: the small record files a tracker stores as artefacts
RECORD_FILES = ("metrics.csv", "history.json", PROVENANCE_FILE)


def _config_dict(config: Any) -> dict[str, Any] | None:
    """A dataclass config as a dict (None for anything else)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return None


def tracking_of(config: Any) -> tuple[str, str | None]:
    """``(tracker, tracking_uri)`` of a config: its own fields, else its ``pretext`` section's
    (BiSSL's run config), else no tracker."""
    for source in (config, getattr(config, "pretext", None)):
        kind = getattr(source, "tracker", None)
        if kind is not None:
            return str(kind), getattr(source, "tracking_uri", None)
    return "none", None


class Trainer:
    """Base class of the method trainers; see the module docstring for the contract."""

    #: name of the method, written into checkpoints
    method: str = "trainer"
    #: whether ``train_step`` splits its work across torchrun processes (see the module docstring)
    data_parallel: bool = False
    #: the prefetching loader of the training images, made on first use (closed after ``fit``)
    loader: Any = None
    #: the experiment tracker of the current ``fit`` (rank 0; :mod:`bmssl.tracking`)
    tracker: Any = None

    def __init__(
        self, config: Any, out_dir: str | Path | None = None, progress: bool = True
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.progress = progress and self.rank == 0
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.record = RunRecord()
        self.best_val: float | None = None
        self._resumed: bool | None = None
        self.device = resolve_device(str(getattr(config, "device", "cpu")))
        configure_device(self.device)
        seed_everything(int(getattr(config, "seed", 0)))

    # -- to implement -------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        """One optimisation step; returns scalars to log (e.g. ``{"loss": ...}``)."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Validation metrics; must include ``"val_acc"``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond the step counter and RNGs that a resume needs."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def backbone(self) -> nn.Module:
        """The pre-trained network a downstream user wants (what ``export`` writes)."""
        raise NotImplementedError

    @classmethod
    def backbone_from_state(cls, config: Any, state: dict[str, Any]) -> nn.Module:
        """:meth:`backbone` rebuilt from a saved :meth:`state_dict` for ``config``."""
        raise NotImplementedError(f"{cls.__name__} does not implement backbone_from_state")

    @classmethod
    def from_config(
        cls, config: Any, out_dir: str | Path | None = None, progress: bool = True
    ) -> Trainer:
        """The trainer of one run on ``config`` alone (what registries, searches and tables
        build); a trainer whose constructor takes more overrides this to make it."""
        return cls(config, out_dir, progress)

    # -- driver -------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that writes the run folder."""
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoints" / "last.pt" if self.out_dir is not None else None

    @property
    def best_path(self) -> Path | None:
        return self.out_dir / "checkpoints" / "best.pt" if self.out_dir is not None else None

    def save(self, path: str | Path | None = None) -> Path:
        """Atomically write a full checkpoint (default: ``<out_dir>/checkpoints/last.pt``).

        Ranks other than 0 write nothing and return the path rank 0 writes.
        """
        target = Path(path) if path is not None else self.checkpoint_path
        if target is None:
            raise ValueError("save() needs a path when the trainer has no out_dir")
        if not self.is_main:
            return target
        return save_checkpoint(
            target,
            {
                "method": self.method,
                "step": self.step,
                "history": self.history,
                "record": self.record.state_dict(),
                "best_val": self.best_val,
                "trainer": self.state_dict(),
            },
        )

    def restore(self, path: str | Path) -> None:
        """Load a checkpoint written by :meth:`save`, RNG state included."""
        state = load_checkpoint(path, expect_keys=("method", "step"))
        if state.get("method") != self.method:
            raise UserError(
                f"checkpoint {path} was written by {state.get('method')!r}, not {self.method!r}; "
                "use another --out or delete the file"
            )
        self.load_state_dict(state["trainer"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.record.load_state_dict(state.get("record", {}))
        self.best_val = state.get("best_val")

    def maybe_resume(self) -> bool:
        """Resume from ``<out_dir>/checkpoints/last.pt`` if it exists (once per trainer)."""
        if self._resumed is None:
            path = self.checkpoint_path
            self._resumed = path is not None and path.is_file()
            if self._resumed:
                assert path is not None
                self.restore(path)
        return self._resumed

    @property
    def log_every(self) -> int:
        return int(getattr(self.config, "log_every", DEFAULT_LOG_EVERY) or DEFAULT_LOG_EVERY)

    def fit(
        self, on_eval: EvalCallback | None = None, max_steps: int | None = None
    ) -> dict[str, float]:
        """Train to ``config.steps`` (or stop early after ``max_steps`` more steps); last metrics.

        A run folder is locked while it trains: a second process on the same ``out_dir`` is
        refused with a message naming the first (rank 0 holds the lock for all ranks).
        """
        if self.out_dir is None or not self.is_main:
            return self._fit(on_eval, max_steps)
        from bmssl.runlock import RunLock

        with RunLock(self.out_dir, what=f"{self.method} run"):
            return self._fit(on_eval, max_steps)

    def _fit(self, on_eval: EvalCallback | None, max_steps: int | None) -> dict[str, float]:
        self.maybe_resume()
        # Every rank has read last.pt before rank 0 may overwrite it.
        distributed.barrier()
        total = int(self.config.steps)
        eval_every = int(getattr(self.config, "eval_every", 0) or total or 1)
        stop = total if max_steps is None else min(total, self.step + max_steps)
        first_step, started_at, status = self.step, None, "FAILED"
        if self.out_dir is not None and self.is_main:
            started_at = self._write_provenance()
            self.tracker = self._start_tracker()
        writer = self.tracker
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=total, initial=self.step, desc=self.method, leave=False, dynamic_ncols=True
            )
        metrics: dict[str, float] = self.history[-1] if self.history else {}
        started = time.perf_counter()
        try:
            while self.step < stop:
                logs = self.train_step(self.step)
                self.step += 1
                self._check_finite(logs)
                self.record.add(logs)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        {k: f"{v:.3g}" for k, v in logs.items() if isinstance(v, float)}
                    )
                validate = self.step % eval_every == 0 or self.step == total
                if validate:
                    metrics = {**logs, **self.validate(), "step": float(self.step)}
                    metrics["time_s"] = time.perf_counter() - started
                    # Rank 0's record everywhere: every rank then makes the same checkpoint calls.
                    metrics = distributed.broadcast_object(metrics)
                    self.history.append(metrics)
                    val = {k: v for k, v in metrics.items() if k.startswith("val")}
                    self._log_row(writer, val)
                    path = self._save_all(metrics)
                    if on_eval is not None and self.is_main:
                        on_eval(self.step, metrics, path)
                elif self.step % self.log_every == 0:
                    self._log_row(writer, {})
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.close()
            if bar is not None:
                bar.close()
            if writer is not None:
                self.tracker = None
                writer.close(status)
            if started_at is not None:
                self._end_provenance(started_at, first_step, time.perf_counter() - started, status)
        # When fit returns on any rank, rank 0's last checkpoint is on disk (a trainer made next
        # on the same folder resumes from it).
        distributed.barrier()
        return metrics

    def close(self) -> None:
        """Stop the data loader's worker processes (a later ``fit`` makes a new loader)."""
        if self.loader is not None:
            self.loader.close()
            self.loader = None

    def _check_finite(self, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            if isinstance(value, float) and not math.isfinite(value):
                hint = getattr(self, "nonfinite_hint", "lower the learning rate")
                raise NonFiniteLossError(self.method, key, value, self.step, hint)

    def _log_row(self, tracker: Any, extra: dict[str, float]) -> None:
        if not self.record.pending and not extra:
            return
        row = self.record.close_interval(self.step, extra)
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, self.step)

    def _start_tracker(self) -> Any:
        """The tracker ``config.tracker`` names (:mod:`bmssl.tracking`), with the resolved
        config logged as its parameters; None for ``none``."""
        from bmssl import provenance, tracking

        kind, uri = tracking_of(self.config)
        if kind == "none":
            return None
        with provenance.preserved_rng():
            tracker = tracking.make_tracker(
                kind, self.out_dir, experiment=self.method,
                run_name=tracking.run_name_of(self.out_dir, self.method), uri=uri,
            )  # fmt: skip
            config = _config_dict(self.config)
            if config is not None:
                tracker.log_params(config)
            tracker.log_artifacts([self.out_dir / PROVENANCE_FILE])  # type: ignore[operator]
        return tracker

    def _write_provenance(self) -> str:
        """Write ``provenance.json`` at the run's first start (a resume keeps it); return the
        session's start time."""
        from bmssl import provenance

        started_at = provenance.now_utc()
        path = self.out_dir / PROVENANCE_FILE  # type: ignore[operator]
        if path.is_file():
            return started_at
        with provenance.preserved_rng():
            refs = provenance.dataset_refs(self.config)
            config = _config_dict(self.config)
            record = provenance.collect(
                datasets=provenance.fingerprint_datasets(refs), configs=config,
                started_at=started_at, method=self.method, run_dir=str(self.out_dir), sessions=[],
            )  # fmt: skip
        write_json(path, record)
        return started_at

    def _end_provenance(self, started_at: str, first: int, wall: float, status: str) -> None:
        """Append this ``fit`` session (steps, wall time, status, the code it ran) to
        ``provenance.json``; the record's ``wall_time_s`` sums the sessions."""
        import json

        from bmssl import provenance

        path = self.out_dir / PROVENANCE_FILE  # type: ignore[operator]
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        code = provenance.code_state()
        record.setdefault("sessions", []).append({
            "started_at": started_at, "ended_at": provenance.now_utc(), "steps": [first, self.step],
            "wall_time_s": round(wall, 3), "status": status.lower(), "commit": code["commit"],
            "dirty": code["dirty"], "diff_sha256": code["diff_sha256"],
        })  # fmt: skip
        record["wall_time_s"] = round(sum(s["wall_time_s"] for s in record["sessions"]), 3)
        with contextlib.suppress(OSError):
            write_json(path, record)

    def _save_all(self, metrics: dict[str, float]) -> Path | None:
        if self.out_dir is None:
            return None
        val = metrics.get("val_acc")
        improved = val is not None and (self.best_val is None or val > self.best_val)
        if improved:
            self.best_val = float(val)  # type: ignore[arg-type]
        # Every rank calls save (a subclass may synchronise in it); only rank 0 writes.
        path = self.save()
        if improved and self.is_main:
            # The same state at the same step: a link, not a second full copy on disk.
            atomic_link(path, self.best_path)  # type: ignore[arg-type]
        if not self.is_main:
            return path
        write_json(self.out_dir / "history.json", self.history)
        # Written with each checkpoint, not each row: rewriting the whole file every log_every
        # steps costs O(rows²) over a long run, and the rows after the last checkpoint are
        # replayed by a resume anyway.
        write_text(self.out_dir / "metrics.csv", self.record.csv_text())
        if self.tracker is not None:
            self.tracker.log_artifacts([self.out_dir / name for name in RECORD_FILES])
        return path


# The registry's look-up of a checkpoint's method, here where the commands long imported it.
from bmssl.methods import TrainedModel, load_trained  # noqa: E402, F401
