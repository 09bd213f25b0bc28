"""BiSSL's entries in the method registry (:mod:`bmssl.methods`).

:func:`register` is the entry point this repository's ``pyproject.toml`` declares in group
``bmssl.plugins``; :mod:`bmssl.plugins` calls it on the first registry look-up.

- ``bissl``: the bilevel trainer (one step = one alternation), started from a shared SimCLR
  pretext encoder that a search's driver trains once;
- ``bissl-finetune``: the fine-tuning stage alone, on the backbone in ``init_from`` (what the
  ``finetune-lr-wd`` search varies).
"""

from __future__ import annotations

from pathlib import Path

from bmssl.methods import ByRunner, ByTrainer, Method, register_method

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
PRESET_FILES = {
    name: PRESETS_DIR / f"{name}.yaml" for name in ("cpu", "tiny", "paper", "paper-v1", "paper-v2")
}

METHODS = (
    Method(
        "bissl",
        "BiSSL",
        "bissl.config:BiSSLConfig",
        ByTrainer("bissl.bilevel:BiSSLTrainer"),
        "BiSSL bilevel alignment of a SimCLR pretext with a downstream task (λ, γ)",
        PRESET_FILES,
        cost=3,
        usage="python -m bissl run --config FILE",
        prepare="bissl.pipeline:shared_pretext",
    ),
    Method(
        "bissl-finetune",
        "BiSSL fine-tuning",
        "bissl.config:BiSSLConfig",
        ByRunner("bissl.pipeline:run_finetune"),
        "BiSSL's downstream fine-tuning of a trained backbone (lr, weight decay)",
        PRESET_FILES,
        cost=1,
        usage="python -m bissl run --config FILE (its fine-tune stage uses these values)",
        prepare="bissl.pipeline:shared_pretext",
    ),
)


def register() -> None:
    """Add BiSSL's methods to the registry (idempotent)."""
    for method in METHODS:
        register_method(method)
