"""The training-loop driver every method shares: progress bar, periodic validation, checkpoints
and exact resume.

A method subclasses :class:`Trainer` and supplies ``train_step``, ``validate``, ``state_dict`` and
``load_state_dict``. ``fit`` then runs ``config.steps`` steps; every ``config.eval_every`` steps
(and at the last step) it validates, writes ``<out_dir>/checkpoints/last.pt`` atomically (model,
optimiser, step, RNG state) and calls ``on_eval(step, metrics, checkpoint_path)``. A trainer made
on an ``out_dir`` that holds ``last.pt`` resumes from it, and a resumed CPU run ends with the same
weights as an uninterrupted one.

Contract for searches (``tuning``): metrics always carry ``"val_acc"`` (higher is better) and
``"step"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bmssl.errors import UserError
from bmssl.io import load_checkpoint, save_checkpoint, seed_everything, write_json


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda[:N]"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"device={name!r} is not supported; use auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name!r} was asked for but CUDA is not available; use device=cpu")
    return torch.device(name)


EvalCallback = Callable[[int, dict[str, float], "Path | None"], None]


class Trainer:
    """Base class of the method trainers; see the module docstring for the contract."""

    #: name of the method, written into checkpoints
    method: str = "trainer"

    def __init__(
        self, config: Any, out_dir: str | Path | None = None, progress: bool = True
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.device = resolve_device(str(getattr(config, "device", "cpu")))
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

    # -- driver -------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoints" / "last.pt" if self.out_dir is not None else None

    def save(self, path: str | Path | None = None) -> Path:
        """Atomically write a full checkpoint (default: ``<out_dir>/checkpoints/last.pt``)."""
        target = Path(path) if path is not None else self.checkpoint_path
        if target is None:
            raise ValueError("save() needs a path when the trainer has no out_dir")
        return save_checkpoint(
            target,
            {
                "method": self.method,
                "step": self.step,
                "history": self.history,
                "trainer": self.state_dict(),
            },
        )

    def restore(self, path: str | Path) -> None:
        """Load a checkpoint written by :meth:`save`, RNG state included."""
        state = load_checkpoint(path)
        if state.get("method") != self.method:
            raise ValueError(
                f"checkpoint {path} was written by {state.get('method')!r}, not {self.method!r}"
            )
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.load_state_dict(state["trainer"])

    def maybe_resume(self) -> bool:
        """Resume from ``<out_dir>/checkpoints/last.pt`` if it exists."""
        path = self.checkpoint_path
        if path is not None and path.is_file():
            self.restore(path)
            return True
        return False

    def fit(
        self, on_eval: EvalCallback | None = None, max_steps: int | None = None
    ) -> dict[str, float]:
        """Train to ``config.steps`` (or stop early after ``max_steps`` more steps); last metrics."""
        self.maybe_resume()
        total = int(self.config.steps)
        eval_every = int(getattr(self.config, "eval_every", 0) or total or 1)
        stop = total if max_steps is None else min(total, self.step + max_steps)
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
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        {k: f"{v:.3g}" for k, v in logs.items() if isinstance(v, float)}
                    )
                for key, value in logs.items():
                    if isinstance(value, float) and not math.isfinite(value):
                        raise FloatingPointError(
                            f"{self.method}: {key} became {value} at step {self.step}"
                        )
                if self.step % eval_every == 0 or self.step == total:
                    metrics = {**logs, **self.validate(), "step": float(self.step)}
                    metrics["time_s"] = time.perf_counter() - started
                    self.history.append(metrics)
                    path = self.save() if self.out_dir is not None else None
                    if self.out_dir is not None:
                        write_json(self.out_dir / "history.json", self.history)
                    if on_eval is not None:
                        on_eval(self.step, metrics, path)
        finally:
            if bar is not None:
                bar.close()
        return metrics
