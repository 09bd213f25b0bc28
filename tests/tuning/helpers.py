"""Tiny configs for the tuning tests, and a toy method registered from outside the packages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bmssl.methods import Method, register_method
from bmssl.trainer import Trainer

#: BMSSL small enough that a trial is a few seconds on one thread
TINY_BMSSL = {
    "dataset": "digits",
    "width": 4,
    "proj_hidden": 8,
    "proj_dim": 8,
    "task_images": 3,
    "support_views": 2,
    "query_views": 1,
    "meta_batch": 1,
    "steps": 2,
    "eval_every": 1,
    "eval_episodes": 10,
}
#: BiSSL on digits, two alternations of one step each, dotted into its sections
TINY_BISSL = {
    "pretext.width": 4,
    "pretext.proj_hidden": 8,
    "pretext.proj_dim": 8,
    "pretext.steps": 2,
    "pretext.batch_size": 16,
    "pretext.eval_episodes": 10,
    "warmup.steps": 2,
    "bilevel.alternations": 2,
    "bilevel.lower_steps": 1,
    "bilevel.upper_steps": 1,
    "bilevel.batch_size": 16,
    "bilevel.lower_batch_size": 16,
    "finetune.steps": 2,
    "finetune.batch_size": 16,
    "eval_every": 1,
    "cg.iters": 2,
}
#: what Ray or Tune print that --quiet must keep off the terminal
RAY_CHATTER = (
    "Checkpoint successfully created",
    "(run_trial pid=",
    "Trial status:",
    "Configuration for experiment",
    "View detailed results",
    " INFO ",
)


def as_tokens(values: dict[str, Any]) -> list[str]:
    """``{"a": 1}`` -> ``["a=1"]`` (command-line overrides)."""
    return [f"{k}={v}" for k, v in values.items()]


@dataclass
class ToyConfig:
    """A method the harness does not ship: it has ``augment`` and ``steps``, nothing else."""

    augment: str = "default"
    steps: int = 2
    eval_every: int = 1
    seed: int = 0


class ToyTrainer(Trainer):
    """Validation accuracy is a fixed function of the augmentation plus a seed offset."""

    method = "toy"

    def train_step(self, step: int) -> dict[str, float]:
        return {"loss": 1.0 / (step + 1)}

    def validate(self) -> dict[str, float]:
        rank = ("none", "weak", "default", "strong", "affine").index(self.config.augment)
        return {"val_acc": 50.0 + 5.0 * rank + self.config.seed + self.step}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


TOY = Method(
    "toy",
    "Toy",
    "tests.tuning.helpers:ToyConfig",
    "tests.tuning.helpers:ToyTrainer",
    "a toy method registered by the tuning tests",
    usage="(a test method)",
)


def register_toy() -> Method:
    return register_method(TOY, replace=True)
