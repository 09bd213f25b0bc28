"""The BiSSL pipeline stages a search needs besides the BiSSL trainer.

- :func:`shared_pretext`: the driver runs the SimCLR pretext stage once
  (``bissl.pipeline.pretext_encoder``) and every trial starts from it through ``init_from``, as
  the pipeline's BiSSL stage would; the paper's searches share one pre-trained encoder too.
- :func:`run_finetune`: the fine-tuning search's trial, BiSSL's downstream fine-tune
  (``bissl.pipeline.finetune``) with the trial's ``finetune_lr`` and ``finetune_wd``.

The fine-tuned backbone is the one in the config's ``init_from``: a pretext file (``{"encoder": ...}``, as
``python -m bissl pretext`` or the search driver writes it; the baseline path's backbone) or a
BiSSL trainer checkpoint (``checkpoints/last.pt``; its lower backbone θ_P, the BiSSL path's).
Fine-tuning is one call without intermediate checkpoints, so a trial reports once, at the end;
the reported metrics are its checkpoint, so a finished trial is never trained twice.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bmssl.errors import UserError
from bmssl.io import write_json

RESULT_FILE = "finetune.json"


def shared_pretext(base: Any, directory: Path) -> dict[str, Any]:
    """Overrides for the search's base config: ``init_from`` = the shared pretext encoder.

    Nothing to do when the user set ``init_from``. The file is cached under ``directory`` (keyed
    by the pretext settings), so a resumed search does not pre-train again.
    """
    if base.init_from is not None:
        return {}
    from bissl.pipeline import pretext_encoder

    print(
        f"tuning: SimCLR pretext stage ({base.pretext_steps} steps), shared by every trial",
        file=sys.stderr,
    )
    _, path = pretext_encoder(base, None, cache_dir=directory, progress=False)
    assert path is not None
    return {"init_from": str(path)}


def load_backbone(config: Any) -> Any:
    """The backbone stored in ``config.init_from`` (pretext file or BiSSL checkpoint)."""
    import torch

    from bissl.trainer import simclr_config
    from bmssl.baselines import encoder_for, load_split

    if config.init_from is None:
        raise UserError(
            "the fine-tuning search needs a trained backbone: set init_from to a file written by "
            "`python -m bissl pretext` or to a BiSSL run's checkpoints/last.pt"
        )
    state = torch.load(config.init_from, map_location="cpu", weights_only=False)
    if "encoder" in state:
        weights = state["encoder"]
    elif isinstance(state.get("trainer"), dict) and "encoder_p" in state["trainer"]:
        weights = state["trainer"]["encoder_p"]
    else:
        raise UserError(
            f"init_from={config.init_from!r} holds neither pretext weights ('encoder') nor a BiSSL "
            "checkpoint ('trainer' -> 'encoder_p')"
        )
    cfg = simclr_config(config)
    encoder = encoder_for(load_split(cfg, "train"), cfg)
    encoder.load_state_dict(weights)
    return encoder.backbone


def run_finetune(
    config: Any,
    out_dir: Path,
    on_eval: Callable[[int, dict[str, float], Path | None], None],
) -> tuple[dict[str, float], int, Path | None]:
    """Fine-tune once (or return the result a restored checkpoint holds); see the module doc.

    Returns ``(metrics, step, checkpoint_path)`` like a trainer run; ``on_eval`` is called only
    when this call trained.
    """
    from bissl.pipeline import finetune, load_splits

    path = out_dir / "checkpoints" / RESULT_FILE
    steps = int(config.finetune_steps)
    if path.is_file():
        return json.loads(path.read_text()), steps, path
    splits = load_splits(config)
    metrics = finetune(load_backbone(config), config, splits["train"], splits["val"])
    metrics["step"] = float(steps)
    write_json(path, metrics)
    on_eval(steps, metrics, path)
    return metrics, steps, path
