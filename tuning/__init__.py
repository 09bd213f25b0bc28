"""Ray Tune searches and ablations over BMSSL and BiSSL hyperparameters.

``python -m tuning search METHOD --space NAME`` runs a search on this machine, its GPUs, or a
Ray cluster (``--address auto``) and writes a Markdown/CSV summary, a plot of accuracy against
each searched hyperparameter and the best config as a YAML the trainer accepts. See
``docs/tuning.md``.

Modules: :mod:`tuning.spaces` (named search spaces), :mod:`tuning.methods` (what a search can
train), :mod:`tuning.trainables` (the Tune function wrapping a trainer),
:mod:`tuning.search` (the driver) and :mod:`tuning.export` (the report).
"""

from tuning.spaces import SPACES, get_space

__all__ = ["SPACES", "get_space"]
