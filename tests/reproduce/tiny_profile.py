"""The tiny Table 1 profile the table tests share (random and SimCLR on digits, 2 seeds)."""

TINY_PROFILE = """
profile: tiny
episodes: 20
n_query: 5
classifier: proto
seeds: [0, 1]
reference: simclr
jobs: 1
methods: [random, simclr]
model: {backbone: conv4, width: 8, proj_hidden: 16, proj_dim: 8}
datasets:
  digits: {image_size: 28, cells: [5w1s, 5w5s]}
method_overrides:
  simclr: {steps: 3, eval_every: 3, eval_episodes: 5, batch_size: 16}
"""
