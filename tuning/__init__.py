"""Ray Tune searches and ablations over the registered methods (:mod:`bmssl.methods`).

``python -m tuning search METHOD --space SPACE`` runs a search on this machine, its GPUs, or a
Ray cluster (``--address``) and writes a Markdown/CSV summary, a plot of accuracy against each
searched hyperparameter (with the spread across seeds) and the best config as a YAML the method
accepts. See ``docs/tuning.md``.

Modules: :mod:`tuning.spaces` (named search spaces), :mod:`tuning.plan` (a request resolved into
a typed plan), :mod:`tuning.search` (the driver), :mod:`tuning.trainables` (the Tune function
wrapping a method's trainer), :mod:`tuning.storage` (directories and URIs),
:mod:`tuning.records` (reading results back from Tune) and :mod:`tuning.report` (the report).
"""

from tuning.spaces import SPACES, get_space

__all__ = ["SPACES", "get_space"]
