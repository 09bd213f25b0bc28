"""The Tune function trainable: one trial = one run of a real method trainer.

The trial's config holds only the searched values (and its ``seed``); the method and the
search's base config arrive through ``tune.with_parameters``. The trainer's own
``<out_dir>/checkpoints/last.pt`` is what travels through Tune checkpoints, so a trial that
Tune restores (after an interrupted driver, a failed node or an ASHA pause) resumes exactly where
the trainer's own resume would.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from tuning.methods import get_target

#: metrics passed to Tune; anything non-numeric the trainer logs is dropped
_REPORTED_KEYS_ALWAYS = ("val_acc", "step")


def run_trial(config: dict[str, Any], spec: Mapping[str, Any]) -> None:
    """Train one trial of ``spec["target"]`` with ``config`` on top of ``spec["base"]``.

    Reports the trainer's metrics at every validation with the checkpoint directory; resumes
    from ``tune.get_checkpoint()`` when Tune hands one over.
    """
    target = get_target(spec["target"])
    trial_config = target.trial_config(spec["base"], _device_for_trial(config, target.fields()))
    _limit_threads(spec.get("cpus_per_trial"))
    # A private scratch dir: the Tune checkpoint, not anything left on this node, is the truth.
    out_dir = Path(tempfile.mkdtemp(prefix="tuning-trial-"))
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as restored:
                shutil.copytree(restored, out_dir / "checkpoints")
        reported = False

        def on_eval(step: int, metrics: dict[str, float], path: Path | None) -> None:
            nonlocal reported
            # report() persists the checkpoint before it returns, so the trainer may overwrite
            # last.pt at its next validation.
            tune.report(tune_metrics(metrics, step), checkpoint=_checkpoint(path))
            reported = True

        final, step, path = target.runner()(trial_config, out_dir, on_eval)
        if not reported and final:
            # Restored from the final checkpoint (the driver died after the last validation but
            # before Tune recorded the trial as finished): report the final metrics again so
            # the trial ends with its result instead of with none.
            tune.report(tune_metrics(final, step), checkpoint=_checkpoint(path))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _checkpoint(path: Path | None) -> Any:
    """The directory holding the trainer's checkpoint file, as a Tune checkpoint."""
    return tune.Checkpoint.from_directory(str(path.parent)) if path is not None else None


def tune_metrics(metrics: Mapping[str, Any], step: int) -> dict[str, float | int]:
    """Finite scalar metrics for Tune, with an integer ``step`` (ASHA's time attribute)."""
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    out["step"] = int(step)
    missing = [k for k in _REPORTED_KEYS_ALWAYS if k not in out]
    if missing:
        raise KeyError(f"trainer metrics lack {missing}; the Trainer contract requires them")
    return out


def _device_for_trial(config: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
    """The trial's params, plus ``device`` = the GPU Ray assigned when the config has one."""
    params = dict(config)
    if "device" in fields and "device" not in params:
        import ray

        # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs, so "cuda" is the right one.
        params["device"] = "cuda" if ray.get_gpu_ids() else "cpu"
    return params


def _limit_threads(cpus: Any) -> None:
    if not cpus:
        return
    import torch

    # Keep a trial to the CPUs Ray reserved for it, or concurrent trials oversubscribe cores.
    torch.set_num_threads(max(1, int(math.floor(float(cpus)))))
