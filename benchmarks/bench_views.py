"""Cost of the SSL views: today's per-image torchvision pipeline against the batched one.

In one process, alternating the two paths run by run so that neighbours on a shared machine
disturb both alike:

- ``views``  one view of each of ``--batch`` images, per-image (``ssl_transform`` applied image
  by image, as ``SSLViews`` did before it was batched) against batched (``SSLViews``), at 28 px
  grayscale ``affine`` and 84 px RGB ``strong``; per-view cost = batch time / batch size;
- ``simclr`` one SimCLR training step (two views of 128 images, Conv4 width 32 at 28 px,
  ``affine``, NT-Xent forward + backward + Adam) with either views;
- ``bmssl``  one BMSSL step with the CPU preset's values (bmssl/presets/bmssl-cpu.yaml, once
  reproduce/configs/bmssl_cpu.yaml): the sampler's ``B·N·(K+Q)`` views, ``meta_gradient``,
  Adam, with either views.

Time: median over ``--repeats`` runs after a warm-up, wall and CPU (process) time; ratios are
per-image time / batched time on ``--clock`` (wall by default), one intra-op thread. Images are
uniform noise for the view cases (the ops' cost does not depend on the pixels) and the
configured dataset for the steps.

    python benchmarks/bench_views.py            # batch 256, 7 repeats
    python benchmarks/bench_views.py --quick    # a smoke run
    python benchmarks/bench_views.py --profile  # also where the batched 84-px path spends its time

Writes ``benchmarks/results/bench_views.json`` (git-ignored); the last printed line is the
84-px ratio.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peers import measure  # noqa: E402
from bmssl.checkpoints import seed_everything  # noqa: E402
from bmssl.data import SSLViews, get_dataset  # noqa: E402
from bmssl.errors import cli_entry  # noqa: E402
from bmssl.io import write_json  # noqa: E402
from bmssl.tasks import TaskSampler  # noqa: E402

VIEW_CASES = (("affine", 28, 1), ("strong", 84, 3))
# The CPU-sized BMSSL config (moved to the presets; the old path is kept for older trees).
BMSSL_CONFIGS = (
    ROOT / "bmssl" / "presets" / "bmssl-cpu.yaml",
    ROOT / "reproduce" / "configs" / "bmssl_cpu.yaml",
)


class PerImageViews(SSLViews):
    """Today's path behind :class:`SSLViews`'s API (``pair`` and ``repeat`` inherited): the
    torchvision pipeline (``ssl_transform``, kept as ``self.transform``) image by image, on
    torch's global RNG (forked and seeded from ``generator`` when one is given)."""

    def __call__(
        self, batch: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if generator is None:
            return torch.stack([self.transform(img) for img in batch]).clamp_(0.0, 1.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            return self(batch)


def compare(
    per_image: Callable[[], object], batched: Callable[[], object], repeats: int
) -> dict[str, dict[str, Any]]:
    """Median wall and CPU seconds of both callables over ``repeats`` alternating runs, after
    one warm-up run of each (allocator, kernel dispatch, dataset caches)."""
    fns = {"per_image": per_image, "batched": batched}
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            times[name]["cpu"].append(time.process_time() - c)
            times[name]["wall"].append(time.perf_counter() - w)
    return {
        name: {
            "wall_s": statistics.median(t["wall"]),
            "cpu_s": statistics.median(t["cpu"]),
            "wall_times_s": t["wall"],
            "cpu_times_s": t["cpu"],
        }
        for name, t in times.items()
    }


def ratio(row: dict, clock: str) -> float:
    key = f"{clock}_s"
    return float(row["per_image"][key] / row["batched"][key])


def view_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for strength, size, channels in VIEW_CASES:
        noise = torch.Generator().manual_seed(args.seed)
        batch = torch.rand(args.batch, channels, size, size, generator=noise)
        per_image = PerImageViews(strength, size, channels)
        batched = SSLViews(strength, size, channels)
        generator = torch.Generator().manual_seed(args.seed)
        timing = compare(
            functools.partial(per_image, batch),
            functools.partial(batched, batch, generator),
            args.repeats,
        )
        rows.append(
            {
                "case": f"{size}px {channels}ch {strength}",
                "strength": strength,
                "image_size": size,
                "channels": channels,
                "batch": args.batch,
                **timing,
                "per_view_ms": {
                    path: {
                        clock: 1e3 * timing[path][f"{clock}_s"] / args.batch
                        for clock in ("wall", "cpu")
                    }
                    for path in timing
                },
            }
        )
    return rows


def simclr_row(args: argparse.Namespace) -> dict:
    """One SimCLR step (Conv4 width 32, 28 px, ``affine``) with either views."""
    # Training imports here: ``--no-steps`` times the views with the data package alone.
    from bmssl.losses import nt_xent
    from bmssl.nets import build_encoder

    data = get_dataset("glyphs", split="train", image_size=28)
    batch_size = min(args.simclr_batch, len(data))
    encoder = build_encoder("conv4", 1, 28, width=32, bn="track").train()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    stream = torch.Generator().manual_seed(args.seed)

    def step(views: SSLViews) -> None:
        idx = torch.randperm(len(data), generator=stream)[:batch_size]
        v1, v2 = views.pair(data.get_batch(idx.numpy()))
        z = encoder(torch.cat([v1, v2]))
        loss = nt_xent(z[:batch_size], z[batch_size:], 0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    per_image, batched = PerImageViews("affine", 28, 1), SSLViews("affine", 28, 1)
    timing = compare(lambda: step(per_image), lambda: step(batched), args.repeats)
    flops = measure.count_flops(lambda: step(batched))
    return {"case": f"simclr step conv4-32 28px affine batch {batch_size}", **timing,
            "flops": flops}  # fmt: skip


def bmssl_row(args: argparse.Namespace) -> dict:
    """One BMSSL step with bmssl_cpu.yaml's values: sample the meta-batch, meta-gradient, Adam."""
    from bmssl.config import load_config
    from bmssl.meta import BMSSLConfig, meta_gradient, model_for_backend
    from bmssl.nets import build_encoder

    path = args.bmssl_config or next((p for p in BMSSL_CONFIGS if p.exists()), BMSSL_CONFIGS[0])
    cfg = load_config(BMSSLConfig, path)
    cfg.validate()
    data = get_dataset(cfg.dataset, split="train", image_size=cfg.image_size)
    channels, size, _ = data.image_shape
    encoder = build_encoder(
        cfg.backbone, channels, size, cfg.width, cfg.bn, cfg.proj_hidden, cfg.proj_dim  # type: ignore[arg-type]
    ).train()  # fmt: skip
    model = model_for_backend(encoder, cfg.backend)
    params: dict[str, torch.Tensor] = dict(encoder.named_parameters())
    optimizer = torch.optim.Adam(encoder.parameters(), lr=cfg.outer_lr)
    samplers = {}
    for name in ("per_image", "batched"):
        sampler = TaskSampler(
            data,
            cfg.task_images,
            cfg.support_views,
            cfg.query_views,
            cfg.meta_batch,
            cfg.augment,
            cfg.seed,
        )
        if name == "per_image":
            sampler.views = PerImageViews(cfg.augment, size, channels)
        samplers[name] = sampler
    counter = iter(range(10**9))

    def step(sampler: TaskSampler) -> None:
        result = meta_gradient(params, model, sampler.sample(next(counter)), cfg)
        optimizer.zero_grad(set_to_none=True)
        for name, p in params.items():
            p.grad = result.grads[name].detach().clone()
        optimizer.step()

    timing = compare(
        lambda: step(samplers["per_image"]), lambda: step(samplers["batched"]), args.repeats
    )
    views = cfg.meta_batch * cfg.task_images * (cfg.support_views + cfg.query_views)
    timing["flops"] = measure.count_flops(lambda: step(samplers["batched"]))
    return {
        "case": f"bmssl step {path.name} ({views} views, {cfg.augment})",
        "config": {k: getattr(cfg, k) for k in ("dataset", "width", "task_images", "support_views",
                                                 "query_views", "meta_batch", "inner_steps",
                                                 "bootstrap_steps", "augment", "backend")},
        **timing,
    }  # fmt: skip


def profile_rows(args: argparse.Namespace, top: int = 12) -> list[dict]:
    """The batched 84-px ``strong`` path's heaviest torch ops (self CPU time per call)."""
    from torch.profiler import ProfilerActivity, profile

    strength, size, channels = VIEW_CASES[-1]
    batch = torch.rand(args.batch, channels, size, size, generator=torch.Generator().manual_seed(0))
    views, generator, calls = SSLViews(strength, size, channels), torch.Generator(), 5
    views(batch, generator)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            views(batch, generator)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [
        {"op": e.key, "ms_per_call": e.self_cpu_time_total / 1e3 / calls, "count": e.count // calls}
        for e in events
    ]


def run(args: argparse.Namespace) -> dict:
    seed_everything(args.seed)
    rows = view_rows(args)
    steps = [] if args.no_steps else [simclr_row(args), bmssl_row(args)]
    profiled = profile_rows(args) if args.profile else []
    return {
        "setup": {
            "batch": args.batch,
            "repeats": args.repeats,
            "clock": args.clock,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "matmul_peak_flops": measure.matmul_peak(),
        },
        "views": rows,
        "steps": steps,
        "profile": profiled,
        "ratios": {r["case"]: ratio(r, args.clock) for r in rows + steps},
    }


def report_lines(report: dict) -> list[str]:
    clock = report["setup"]["clock"]
    lines = []
    for r in report["views"]:
        ms = r["per_view_ms"]
        lines.append(
            f"views {r['case']:18s} per-image {ms['per_image'][clock]:.4f} ms/view, "
            f"batched {ms['batched'][clock]:.4f} ms/view: {ratio(r, clock):5.1f}x "
            f"(cpu clock {ratio(r, 'cpu'):.1f}x)"
        )
    for r in report["profile"]:
        lines.append(f"  84px batched: {r['op']:36s} {r['ms_per_call']:7.3f} ms x{r['count']}")
    peak = report["setup"]["matmul_peak_flops"]
    lines.append(f"views: no matmul or convolution FLOPs (element-wise ops are not counted); "
                 f"measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s")  # fmt: skip
    for r in report["steps"]:
        lines.append(
            f"{r['case']}: per-image {r['per_image'][f'{clock}_s']:.3f} s, batched "
            f"{r['batched'][f'{clock}_s']:.3f} s: {ratio(r, clock):.2f}x "
            f"(cpu clock {ratio(r, 'cpu'):.2f}x)"
        )
        rate = measure.flop_rate(r["flops"], r["batched"][f"{clock}_s"], peak)
        lines.append(f"  batched step: {measure.fmt_flops(rate)}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="images per view batch")
    parser.add_argument("--simclr-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="which median the ratios use"
    )
    parser.add_argument(
        "--bmssl-config", type=Path, default=None, help="BMSSL YAML (default: the cpu preset)"
    )
    parser.add_argument("--no-steps", action="store_true", help="only the view cases")
    parser.add_argument("--profile", action="store_true", help="top ops of the 84-px batched path")
    parser.add_argument("--quick", action="store_true", help="smoke run (batch 32, 1 repeat)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_views.json"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.simclr_batch, args.repeats = 32, 32, 1
    return args


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report = run(args)
    write_json(args.out, report)
    for line in report_lines(report):
        print(line)
    print(f"wrote {args.out}")
    big = next(r for r in report["views"] if r["image_size"] == 84)
    print(f"84px ratio (per-image / batched, {args.clock}): {ratio(big, args.clock):.1f}x")


if __name__ == "__main__":
    main()
