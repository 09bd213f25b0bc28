"""The harness's hot paths side by side with the libraries a researcher would otherwise pick
(``benchmarks/bench_peers.py``): kornia, lightly, torchopt, betty and a learn2learn-style clone.

Each module times one path; :mod:`benchmarks.peers.measure` holds the shared timing, memory and
FLOP helpers (also used by ``bench_meta_step.py`` and ``bench_views.py``).
"""
