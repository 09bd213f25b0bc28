"""Batches per second of a file-backed 84-px tree through StepBatchLoader, workers 0 against 2.

A temporary ImageFolder tree of JPEG files (``--images`` of ``--side`` px, decoded and resized
to 84 px as miniImageNet's are) is read in batches of ``--batch`` whose indices are a pure
function of the step, as the trainers draw them. Two cases per worker count, after a warm-up
step (which starts the workers):

- ``decode``  the training process only asks for the next batch: the rate of decoding;
- ``overlap`` it also makes the 84-px ``strong`` views of each batch (a stand-in for a CPU
  training step), which the workers' decoding can overlap.

One torch thread in the main process, one in each worker; on a machine whose cores are busy
the gain shrinks to what is idle.

    python benchmarks/bench_loader.py            # 512 images, batch 64, 30 steps
    python benchmarks/bench_loader.py --quick    # a smoke run

Writes ``benchmarks/results/bench_loader.json`` (git-ignored); the last line prints the ratios.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bmssl.data import SSLViews, StepBatchLoader, get_dataset  # noqa: E402
from bmssl.errors import cli_entry  # noqa: E402
from bmssl.io import write_json  # noqa: E402

SIZE = 84


def write_tree(root: Path, images: int, side: int, seed: int) -> None:
    """``images`` JPEGs in 16 class folders: smooth colour fields with noise, as photos go."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, side)[:, None, None]
    for i in range(images):
        folder = root / f"class{i % 16:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.uniform(0, 255, 3) * ramp + rng.uniform(0, 255, 3) * ramp.transpose(1, 0, 2)
        pixels = np.clip(base / 2 + rng.normal(0, 20, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.jpg", quality=90)


def indices_for_step(step: int, n: int, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, step]).choice(n, batch, replace=False)


def rate(loader: StepBatchLoader, steps: int, work=None) -> dict[str, float]:
    """Batches per second over ``steps`` steps after one warm-up step, wall and CPU clock."""
    loader.get(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(1, steps + 1):
        batch = loader.get(step)
        if work is not None:
            work(batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"batches_per_s": steps / wall, "wall_s": wall, "main_cpu_s": cpu}


def run(args: argparse.Namespace) -> dict:
    views = SSLViews("strong", SIZE, 3)
    generator = torch.Generator().manual_seed(args.seed)
    cases = {"decode": None, "overlap": lambda batch: views(batch, generator)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_tree(Path(tmp), args.images, args.side, args.seed)
        data = get_dataset(f"imagefolder:{tmp}", protocol="unlabeled", image_size=SIZE)
        indices = functools.partial(indices_for_step, n=len(data), batch=args.batch, seed=args.seed)
        for case, work in cases.items():
            for workers in (0, args.workers):
                with StepBatchLoader(data, indices, workers=workers, prefetch=args.prefetch) as ld:
                    rows.append({"case": case, "workers": workers, **rate(ld, args.steps, work)})
    by = {(r["case"], r["workers"]): r["batches_per_s"] for r in rows}
    return {
        "setup": {
            "images": args.images,
            "side": args.side,
            "image_size": SIZE,
            "batch": args.batch,
            "steps": args.steps,
            "prefetch": args.prefetch,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        },
        "rows": rows,
        "ratios": {case: by[(case, args.workers)] / by[(case, 0)] for case in cases},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--side", type=int, default=128, help="side of the JPEG files, px")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run (64 images, 3 steps)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_loader.json"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.batch, args.steps = 64, 16, 3
    return args


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    report = run(args)
    write_json(args.out, report)
    for r in report["rows"]:
        print(
            f"{r['case']:8s} workers {r['workers']}: {r['batches_per_s']:6.2f} batches/s "
            f"(main process cpu {r['main_cpu_s']:.2f} s of {r['wall_s']:.2f} s)"
        )
    print(f"wrote {args.out}")
    ratios = ", ".join(f"{case} {value:.2f}x" for case, value in report["ratios"].items())
    print(f"workers {args.workers} / workers 0 (batches/s): {ratios}")


if __name__ == "__main__":
    main()
