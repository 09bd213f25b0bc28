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

Beside this loop driver: :mod:`bmssl.devices`, :mod:`bmssl.run_record` (``metrics.csv`` rows) and
:mod:`bmssl.run_session` (``provenance.json``, trackers); their names are importable from here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from bmssl import distributed
from bmssl.checkpoints import load_checkpoint, save_checkpoint, seed_everything
from bmssl.devices import resolve_device
from bmssl.errors import NonFiniteLossError, UserError
from bmssl.io import atomic_link
from bmssl.precision import configure_device
from bmssl.run_record import (  # noqa: F401 (the file names re-exported)
    PROVENANCE_FILE,
    RECORD_FILES,
    RunRecord,
    write_record_files,
)
from bmssl.run_session import (  # noqa: F401 (tracking_of re-exported)
    end_provenance,
    start_tracker,
    tracking_of,
    write_provenance,
)

DEFAULT_LOG_EVERY = 10
EvalCallback = Callable[[int, dict[str, float], "Path | None"], None]


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
        """The tracker ``config.tracker`` names (:func:`bmssl.run_session.start_tracker`)."""
        return start_tracker(self.config, self.out_dir, self.method)  # type: ignore[arg-type]

    def _write_provenance(self) -> str:
        """:func:`bmssl.run_session.write_provenance`: the session's start time."""
        return write_provenance(self.config, self.out_dir, self.method)  # type: ignore[arg-type]

    def _end_provenance(self, started_at: str, first: int, wall: float, status: str) -> None:
        """Append this ``fit`` session to ``provenance.json`` (:mod:`bmssl.run_session`)."""
        end_provenance(self.out_dir, started_at, first, self.step, wall, status)  # type: ignore[arg-type]

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
        write_record_files(self.out_dir, self.history, self.record, self.tracker)
        return path


# The registry's look-up of a checkpoint's method, here where the commands long imported it.
from bmssl.methods import TrainedModel, load_trained  # noqa: E402, F401
