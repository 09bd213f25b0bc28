"""What a search can train: each *target* names a config dataclass and a trainer class.

Targets are imported lazily (``"module:Name"``) so that listing spaces or parsing the command
line never imports torch or a method that is not searched. The trainers all follow the
``bmssl.trainer.Trainer`` contract: ``Trainer(config, out_dir, progress)`` and
``fit(on_eval=...)`` with ``"val_acc"`` and ``"step"`` in the metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bmssl.config import config_from_dict
from bmssl.errors import UserError, check_choice

#: tiny settings that make one trial take seconds on a CPU (the newcomer example and tests)
_CPU_COMMON: dict[str, Any] = {
    "dataset": "glyphs",
    "width": 8,
    "proj_hidden": 32,
    "proj_dim": 16,
    "eval_episodes": 100,
}

#: BiSSL on digits with a glyph pretext, a few alternations of a few steps each
_BISSL_CPU: dict[str, Any] = {
    "width": 8,
    "proj_hidden": 32,
    "proj_dim": 16,
    "pretext_steps": 100,
    "pretext_batch_size": 64,
    # the paper's LARS lr (1.0) is for large batches; it wrecks a width-8 net in a few steps
    "lower_lr": 0.02,
    "head_warmup_steps": 300,
    "alternations": 24,
    "lower_steps": 4,
    "upper_steps": 2,
    "batch_size": 32,
    "lower_batch_size": 32,
    "finetune_steps": 60,
    "finetune_batch_size": 32,
    "eval_every": 6,
}


@dataclass(frozen=True)
class Target:
    """One trainable thing: its config class, its trainer (or runner), its CPU-sized preset."""

    name: str
    config_ref: str
    #: a ``bmssl.trainer.Trainer`` subclass, or (for targets that are not one) a runner
    #: function ``run(config, out_dir, on_eval) -> (metrics, step, checkpoint_path)``
    run_ref: str
    description: str
    cpu_preset: Mapping[str, Any] = field(default_factory=dict)
    #: how to train with a config file of this target (quoted in best_config.yaml)
    usage: str = ""
    #: the config attribute holding a trial's step budget (ASHA's max_t)
    steps_attr: str = "steps"
    #: the config attribute saying how often a trial validates (None: once, at the end)
    eval_attr: str | None = "eval_every"
    #: ``prepare(base_config, directory) -> overrides``, run once by the driver before the
    #: trials (e.g. a pretext stage every trial starts from)
    prepare_ref: str | None = None

    def config_class(self) -> type:
        return _resolve(self.config_ref, self.name)

    def runner(self) -> Callable[[Any, Path, Any], tuple[dict[str, float], int, Path | None]]:
        """``run(config, out_dir, on_eval) -> (final metrics, step, checkpoint path)``."""
        obj = _resolve(self.run_ref, self.name)
        if isinstance(obj, type):
            return functools.partial(fit_trainer, obj)
        return obj

    def prepare(self, base: Any, directory: Path) -> Any:
        """The base config after this target's one-off driver-side stage (if it has one)."""
        if self.prepare_ref is None:
            return base
        overrides = _resolve(self.prepare_ref, self.name)(base, directory)
        return config_from_dict(self.config_class(), overrides, base=base) if overrides else base

    def budget(self, config: Any) -> int:
        """Steps a full trial trains (``config.steps`` for trainers)."""
        return int(getattr(config, self.steps_attr))

    def eval_interval(self, config: Any) -> int:
        """Steps between two reports of a trial."""
        every = int(getattr(config, self.eval_attr) or 0) if self.eval_attr else 0
        return every or self.budget(config)

    def fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config_class())]

    def base_config(
        self,
        config_path: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        preset: str | None = None,
    ) -> Any:
        """Defaults, then the preset, then a YAML file, then ``key=value`` overrides."""
        cls = self.config_class()
        values: dict[str, Any] = {}
        if preset is not None:
            check_choice("preset", preset, PRESETS)
            known = set(self.fields())
            # The preset is shared across methods; keep only the fields this one has.
            values.update({k: v for k, v in self.cpu_preset.items() if k in known})
        if config_path is not None:
            values.update(_read_yaml(config_path))
        values.update(overrides or {})
        return config_from_dict(cls, values)

    def trial_config(self, base: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        """The config of one trial: the search's base config with the sampled params on top."""
        cls = self.config_class()
        return config_from_dict(cls, params, base=config_from_dict(cls, base))


def fit_trainer(
    trainer_class: type, config: Any, out_dir: Path, on_eval: Any
) -> tuple[dict[str, float], int, Path | None]:
    """Run a ``bmssl.trainer.Trainer`` on ``out_dir`` (resuming from its last.pt if present)."""
    trainer = trainer_class(config, out_dir=out_dir, progress=False)
    final = trainer.fit(on_eval=on_eval)
    return final, trainer.step, trainer.checkpoint_path


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; pass the path to a YAML file")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of option: value")
    return loaded


def _resolve(ref: str, target: str) -> Any:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise UserError(
                f"search target {target!r} needs {module_name}, which is not available in this "
                "checkout; update the checkout or pick another method"
            ) from None
        raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(
            f"search target {target!r} needs {ref}, which {module_name} does not define"
        ) from None


PRESETS = ("cpu",)

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "bmssl",
            "bmssl.meta:BMSSLConfig",
            "bmssl.meta:BMSSLTrainer",
            "BMSSL meta-training (inner steps L, bootstrap horizon delta)",
            {
                **_CPU_COMMON,
                "steps": 60,
                "eval_every": 20,
                "meta_batch": 2,
                "n_way": 5,
                "inner_steps": 1,
            },
            usage="python -m bmssl train --config FILE --out RUN_DIR",
        ),
        Target(
            "bissl",
            "bissl.trainer:BiSSLConfig",
            "bissl.trainer:BiSSLTrainer",
            "BiSSL bilevel alignment (lambda, gamma)",
            _BISSL_CPU,
            usage="python -m bissl run --config FILE",
            steps_attr="alternations",
            prepare_ref="tuning.bissl_stages:shared_pretext",
        ),
        Target(
            "bissl-finetune",
            "bissl.trainer:BiSSLConfig",
            "tuning.bissl_stages:run_finetune",
            "BiSSL downstream fine-tuning of a trained backbone (lr, weight decay)",
            _BISSL_CPU,
            usage="python -m bissl run --config FILE (its fine-tune stage uses these values)",
            steps_attr="finetune_steps",
            eval_attr=None,
            prepare_ref="tuning.bissl_stages:shared_pretext",
        ),
        Target(
            "simclr",
            "bmssl.baselines:SimCLRConfig",
            "bmssl.baselines:SimCLRTrainer",
            "SimCLR pre-training baseline",
            {**_CPU_COMMON, "batch_size": 32, "steps": 30, "eval_every": 10},
            usage="bmssl.config.load_config(SimCLRConfig, FILE), then SimCLRTrainer",
        ),
    )
}


def get_target(name: str) -> Target:
    check_choice("search target", name, tuple(TARGETS))
    return TARGETS[name]
