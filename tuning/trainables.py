"""The Tune function trainable: one trial = one run of a registered method.

The trial's config holds only the searched values (and its ``seed``); the search's
:class:`tuning.plan.SearchPlan` (method, base config, the space's final stage) arrives through
``tune.with_parameters``. A trial runs the method the way it trains (``Method.kind``): its
trainer (``Method.build_trainer``, a :class:`bmssl.trainer.Trainer`) or its runner function.

The trainer's own ``checkpoints/last.pt`` is what travels through Tune checkpoints, so a trial
that Tune restores (after an interrupted driver, a failed node or an ASHA pause) resumes exactly
where the trainer's own resume would.

A space with a final stage (``Space.finish``; BiSSL's λ/γ search fine-tunes θ_P with
:func:`bissl.pipeline.finetune_lower_backbone`) runs it once the trainer has finished: the
trainer's validations are reported under the space's prefix (``bissl_val_acc``, ...), and the
final report carries the stage's metrics, its ``val_acc`` the trial's metric. The stage's metrics are stored in the last Tune checkpoint, so a restored trial
never runs it twice.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from bmssl.methods import resolve
from tuning.plan import SearchPlan

#: metrics passed to Tune; anything non-numeric the trainer logs is dropped
_REPORTED_KEYS_ALWAYS = ("val_acc", "step")
#: the final stage's metrics, kept beside the trainer checkpoint in the trial's Tune checkpoint
FINISH_FILE = "finish.json"


def run_trial(config: dict[str, Any], plan: SearchPlan) -> None:
    """Train one trial with ``config`` (searched values and seed) on top of ``plan.base``.

    Reports the metrics at every validation with the checkpoint; resumes from
    ``tune.get_checkpoint()`` when Tune hands one over.
    """
    finish, prefix = plan.space.finish, plan.space.finish_prefix
    trial_config = plan.trial_config(_device_for_trial(config, plan.base))
    _limit_threads(plan.cpus_per_trial)
    # A private scratch dir: the Tune checkpoint, not anything left on this node, is the truth.
    out_dir = Path(tempfile.mkdtemp(prefix="tuning-trial-"))
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as restored:
                shutil.copytree(restored, out_dir / "checkpoints")
        finished = out_dir / "checkpoints" / FINISH_FILE
        reported = False

        def on_eval(step: int, metrics: dict[str, float], path: Path | None) -> None:
            nonlocal reported
            shown = metrics if finish is None else _prefixed(metrics, prefix)
            # report() persists the checkpoint before it returns, so the trainer may overwrite
            # its file at its next validation.
            _report(tune_metrics(shown, step, need_val_acc=finish is None), path)
            reported = True

        trainer = None
        if plan.method.kind == "runner":
            runner = plan.method.runner_function()
            assert runner is not None
            final, step, path = runner(trial_config, out_dir, on_eval)
        else:  # "trainer": spaces refuse methods that are not trained
            trainer = plan.method.build_trainer(trial_config, out_dir, progress=False)
            final = trainer.fit(on_eval=on_eval)
            step, path = trainer.step, trainer.checkpoint_path
        if finish is not None:
            if finished.is_file():
                # restored after the final stage had run: its metrics are in the checkpoint
                final = json.loads(finished.read_text())
            else:
                stage = resolve(finish, f"space {plan.space.name!r}")
                final = {**_prefixed(final, prefix), **stage(trainer)}
                finished.write_text(json.dumps(final))
            _report(tune_metrics(final, step), path, extra=finished)
        elif not reported and final:
            # Restored from the final checkpoint (the driver died after the last validation but
            # before Tune recorded the trial as finished): report the final metrics again so
            # the trial ends with its result instead of with none.
            _report(tune_metrics(final, step), path)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _report(metrics: dict[str, float | int], path: Path | None, extra: Path | None = None) -> None:
    """``tune.report`` with a checkpoint of the file at ``path`` (and ``extra``), if any.

    Only those files go into the Tune checkpoint (not, e.g., the trainer's ``best.pt``)."""
    if path is None or not path.is_file():
        tune.report(metrics)
        return
    staging = Path(tempfile.mkdtemp(prefix="tuning-ckpt-"))
    try:
        for file in (path, extra):
            if file is not None and file.is_file():
                shutil.copy2(file, staging / file.name)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(staging)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prefixed(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Validation metrics renamed ``prefix + key`` (``val_acc`` -> ``bissl_val_acc``)."""
    return {(prefix + k if k.startswith("val_") else k): v for k, v in metrics.items()}


def tune_metrics(
    metrics: Mapping[str, Any], step: int, need_val_acc: bool = True
) -> dict[str, float | int]:
    """Finite scalar metrics for Tune, with an integer ``step`` (ASHA's time attribute)."""
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    out["step"] = int(step)
    needed = _REPORTED_KEYS_ALWAYS if need_val_acc else ("step",)
    missing = [k for k in needed if k not in out]
    if missing:
        raise KeyError(f"trainer metrics lack {missing}; the Trainer contract requires them")
    return out


def _device_for_trial(config: Mapping[str, Any], base: Any) -> dict[str, Any]:
    """The trial's params, plus ``device`` = the GPU Ray assigned when the config has one, and
    no trainer-side tracker (a search's is Tune's callback)."""
    params = dict(config)
    if hasattr(base, "device") and "device" not in params:
        import ray

        # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs, so "cuda" is the right one.
        params["device"] = "cuda" if ray.get_gpu_ids() else "cpu"
    # A search tracks its trials through Tune's callback (tuning.session), not each trainer.
    for key, section in (("tracker", base), ("pretext.tracker", getattr(base, "pretext", None))):
        if getattr(section, "tracker", "none") != "none" and key not in params:
            params[key] = "none"
    return params


def _limit_threads(cpus: Any) -> None:
    if not cpus:
        return
    import torch

    # Keep a trial to the CPUs Ray reserved for it, or concurrent trials oversubscribe cores.
    torch.set_num_threads(max(1, int(math.floor(float(cpus)))))
