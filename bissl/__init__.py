"""BiSSL (arXiv 2410.02387): bilevel alignment of a SimCLR pretext with a downstream classifier.

Modules: ``objectives`` (the two levels), ``hypergrad`` (Hessian-vector products, conjugate
gradient, implicit gradient), ``lars`` (the lower-level optimiser), ``trainer`` (``BiSSLConfig``,
``BiSSLTrainer``), ``downstream`` (evaluation, head warm-up, fine-tuning), ``metrics`` (top-k,
11-point mAP), ``pipeline`` (pretext -> warm-up -> BiSSL -> fine-tune, and the baseline).
"""
