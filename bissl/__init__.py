"""BiSSL (arXiv 2410.02387): bilevel alignment of a SimCLR pretext with a downstream classifier.

Modules, by job:

- ``config``: ``BiSSLConfig``, one section per stage; ``methods``: the registry entries (an entry
  point of ``pyproject.toml``); ``presets/``;
- ``objectives``: the two levels' losses; ``lars``: the lower-level optimiser; ``schedule``;
- the hypergradient: ``trees`` (tuple-of-tensor arithmetic), ``hvp`` (Hessian-vector products,
  the damped operator), ``cg`` (exact and layerwise conjugate gradient behind one solver),
  ``implicit`` (implicit differentiation of the lower level), ``upper`` (BiSSL's upper-level
  gradients);
- ``bilevel``: ``BiSSLTrainer`` (one step = one alternation) and ``state`` (its checkpoint);
- ``downstream`` (labelled splits, the low-label subset), ``batches`` (seeded batch streams),
  ``stages`` (data, the SimCLR pretext, ``init_from``, the head warm-up), ``finetune`` (evaluation, fine-tuning), ``metrics`` (top-k,
  11-point mAP), ``curves`` (the per-alternation figure);
- ``pipeline``: pretext -> warm-up -> BiSSL -> fine-tune, and the baseline, on one path.
"""
