"""Peak resident memory of one paper-preset miniImageNet BMSSL meta-step, in this process.

The paper preset (``bmssl/presets/bmssl-paper.yaml``: tasks of 64 images, K = Q = 2, B = 4,
L = 1, δ = 1) on Table 1's miniImageNet network (Conv4 width 64, 84-px RGB); the views are
uniform noise of the views' shape (memory does not depend on the pixels). Prints one JSON line:
``{"backend", "task_chunk", "seconds", "max_rss_gb"}`` (the process's peak resident set, the
interpreter and torch included). Run by ``bench_peers.py --paper-memory`` once per backend, each
in a fresh process.

    python benchmarks/peers/paper_memory.py --backend autograd
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bmssl.config import load_config  # noqa: E402
from bmssl.meta import BMSSLConfig, meta_gradient, model_for_backend  # noqa: E402
from bmssl.nets import build_encoder  # noqa: E402
from bmssl.tasks import TaskBatch  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="autograd")
    parser.add_argument("--task-chunk", type=int, default=0)
    parser.add_argument("--size", type=int, default=84, help="image side (84: miniImageNet)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--tasks", type=int, default=None, help="meta-batch (default: the preset's 4); the "
        "per-task backends hold one task's graph at a time, so their peak barely depends on it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(BMSSLConfig, ROOT / "bmssl" / "presets" / "bmssl-paper.yaml")
    cfg.backend, cfg.task_chunk, cfg.width = args.backend, args.task_chunk, args.width
    cfg.meta_batch = args.tasks or cfg.meta_batch
    b, n, k, q = cfg.meta_batch, cfg.task_images, cfg.support_views, cfg.query_views
    g = torch.Generator().manual_seed(0)
    shape = (3, args.size, args.size)
    batch = TaskBatch(
        torch.rand(b, n * k, *shape, generator=g), torch.rand(b, n * q, *shape, generator=g),
        n, k, q, torch.zeros(b, n, dtype=torch.long),
    )  # fmt: skip
    encoder = build_encoder(
        "conv4", 3, args.size, cfg.width, cfg.bn, cfg.proj_hidden, cfg.proj_dim  # type: ignore[arg-type]
    ).train()  # fmt: skip
    model = model_for_backend(encoder, cfg.backend)
    start = time.perf_counter()
    meta_gradient(dict(encoder.named_parameters()), model, batch, cfg)
    seconds = time.perf_counter() - start
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(json.dumps({"backend": args.backend, "task_chunk": args.task_chunk, "tasks": b,
                      "seconds": seconds, "max_rss_gb": rss_gb}))  # fmt: skip


if __name__ == "__main__":
    main()
