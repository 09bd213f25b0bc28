"""Time and peak memory of one BMSSL meta-iteration per backend, against a plain SimCLR step.

In one process, on one meta-batch of B tasks, for every inner-loop length L:

- ``higher``          higher.innerloop_ctx, task by task (second order, then first order);
- ``func-loop``       torch.func.grad per task;
- ``func-vmap``       torch.func.grad of torch.func.vmap over the B tasks (the default);
- ``func-vmap-c1``    the same, one task per vmapped call (``task_chunk=1``: memory of one task);
- ``autograd``        plain autograd per task on native BatchNorm (bootstrap step reusing θ_L's
  forward);
- ``simclr``          NT-Xent forward + backward on two views of the same B·N images.

A "meta-iteration" is the meta-gradient (the outer Adam step is the same for every variant and
negligible). Time: median of ``--repeats`` runs after a warm-up, both wall and CPU (process)
time; by default one intra-op thread and ratios of CPU time, which neighbours on a shared
machine disturb far less than wall time (``--clock wall --threads 2`` for the other view).
Peak memory: the largest net allocation during one run (on the CPU from the PyTorch profiler's
memory events, on CUDA the allocator's peak; ``benchmarks/peers/measure.py``). Every variant's
gradient is checked against ``higher`` of the same order. FLOPs of each meta-gradient (``torch.utils.flop_counter``) give
its achieved FLOP/s against this box's measured float32 matmul peak.

    python benchmarks/bench_meta_step.py                # L in {1, 5, 10}, B = 8
    python benchmarks/bench_meta_step.py --quick        # a smoke run

Writes ``benchmarks/results/meta_step.json`` (git-ignored) and prints a ratio table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peers import measure  # noqa: E402
from bmssl.checkpoints import seed_everything  # noqa: E402
from bmssl.errors import cli_entry  # noqa: E402
from bmssl.io import write_json  # noqa: E402
from bmssl.losses import nt_xent  # noqa: E402
from bmssl.meta import BMSSLConfig, meta_gradient, model_for_backend  # noqa: E402
from bmssl.pretrain import encoder_for, load_split  # noqa: E402
from bmssl.tasks import TaskBatch, TaskSampler  # noqa: E402

VARIANTS = (  # name, backend, vmap, task_chunk
    ("higher", "higher", False, 0),
    ("func-loop", "func", False, 0),
    ("func-vmap", "func", True, 0),
    ("func-vmap-c1", "func", True, 1),
    ("autograd", "autograd", False, 0),
)


def timed(
    fn: Callable[[], object], repeats: int, device: torch.device | None = None
) -> dict[str, float | list[float]]:
    """Median wall and CPU (process) seconds of ``fn`` over ``repeats`` runs after a warm-up.

    On a shared machine wall time mostly measures the neighbours; single-threaded CPU time is
    what the run itself costs, so ratios use it by default (``--clock``).
    """
    fn()  # warm-up: allocator, monkey-patching caches, vmap rule lookup
    wall, cpu = [], []
    for _ in range(repeats):
        measure.sync(device)
        w, c = time.perf_counter(), time.process_time()
        fn()
        measure.sync(device)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return {
        "wall_s": statistics.median(wall),
        "cpu_s": statistics.median(cpu),
        "wall_times_s": wall,
        "cpu_times_s": cpu,
    }


def simclr_step(encoder: torch.nn.Module, batch: TaskBatch) -> Callable[[], object]:
    """NT-Xent on support views 0 and 1 of the batch's B·N images (forward + backward)."""
    n, k = batch.task_images, batch.support_views
    views = batch.support.reshape(len(batch), n, k, *batch.support.shape[2:])
    v1 = views[:, :, 0].reshape(-1, *views.shape[3:])
    v2 = views[:, :, 1 % k].reshape(-1, *views.shape[3:])
    params = list(encoder.parameters())

    def run() -> object:
        z = encoder(torch.cat([v1, v2]))
        loss = nt_xent(z[: len(v1)], z[len(v1) :], 0.5)
        return torch.autograd.grad(loss, params)

    return run


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    scale = max(float(v.abs().max()) for v in b.values()) or 1.0
    return max(float((a[n] - b[n]).abs().max()) for n in b) / scale


def _variant_rows(
    args: argparse.Namespace, base: BMSSLConfig, encoder: torch.nn.Module, batch: TaskBatch
) -> list[dict]:
    """Time, memory, FLOPs and gradient differences of every variant, L and order."""
    params = dict(encoder.named_parameters())
    # Gradient equality is checked in float64, where rounding cannot hide a real difference
    # (float32 second-order unrolls amplify rounding; those differences are reported too).
    encoder64 = copy.deepcopy(encoder).double()
    params64 = dict(encoder64.named_parameters())
    batch64 = batch.to(torch.float64)
    rows = []
    for steps in args.inner_steps:
        for first_order in (False, True):
            reference = reference64 = None
            for name, backend, vmap, chunk in VARIANTS:
                cfg = dataclasses.replace(
                    base, inner_steps=steps, backend=backend, vmap=vmap, task_chunk=chunk,
                    first_order=first_order,
                )  # fmt: skip
                model = model_for_backend(encoder, backend)

                def step(cfg: BMSSLConfig = cfg, model: torch.nn.Module = model):
                    return meta_gradient(params, model, batch, cfg)

                result = step()
                exact = meta_gradient(
                    params64, model_for_backend(encoder64, backend), batch64, cfg
                ).grads
                if reference is None:
                    reference, reference64 = result.grads, exact
                timing = timed(step, args.repeats, batch.support.device)
                rows.append(
                    {
                        "variant": name,
                        "order": "first" if first_order else "second",
                        "L": steps,
                        **timing,
                        "peak_mb": measure.peak_mb(step, batch.support.device),
                        "flops": measure.count_flops(step),
                        "grad_rel_diff_vs_higher": max_rel_diff(result.grads, reference),
                        "grad_rel_diff_vs_higher_f64": max_rel_diff(exact, reference64),
                    }
                )
                print(
                    f"  {name:12s} {rows[-1]['order']:6s} L={steps:2d} "
                    f"wall {timing['wall_s']:7.3f}s cpu {timing['cpu_s']:7.3f}s",
                    flush=True,
                )
    return rows


def run(args: argparse.Namespace) -> dict:
    seed_everything(args.seed)
    base = BMSSLConfig(
        dataset=args.dataset, width=args.width, task_images=args.task_images, support_views=args.support_views,
        query_views=args.query_views, meta_batch=args.tasks, bootstrap_steps=args.delta,
        inner_lr=args.inner_lr, seed=args.seed,
    )  # fmt: skip
    base.validate()
    data = load_split(base, "train")
    device = torch.device(args.device)
    encoder = encoder_for(data, base).train().to(device)
    batch = TaskSampler(
        data,
        base.task_images,
        base.support_views,
        base.query_views,
        base.meta_batch,
        base.augment,
        args.seed,
    ).sample(0, device=device)
    rows = _variant_rows(args, base, encoder, batch)
    simclr = simclr_step(encoder, batch)
    rows.append(
        {
            "variant": "simclr",
            "order": "-",
            "L": 0,
            **timed(simclr, args.repeats, device),
            "peak_mb": measure.peak_mb(simclr, device),
            "flops": measure.count_flops(simclr),
            "grad_rel_diff_vs_higher": 0.0,
            "grad_rel_diff_vs_higher_f64": 0.0,
        }
    )
    setup = {
        "dataset": args.dataset, "tasks_B": args.tasks, "task_images": args.task_images,
        "support_views": args.support_views, "query_views": args.query_views, "bootstrap_steps": args.delta,
        "inner_lr": args.inner_lr, "width": args.width, "repeats": args.repeats,
        "clock": args.clock, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "matmul_peak_flops": measure.matmul_peak(device), "device": str(device),
    }  # fmt: skip
    return {"setup": setup, "rows": rows}


def table(report: dict) -> str:
    """Readable table: time and memory per variant, with ratios to ``higher`` and to SimCLR."""
    rows = report["rows"]
    clock = "cpu_s" if report["setup"]["clock"] == "cpu" else "wall_s"
    simclr = next(r for r in rows if r["variant"] == "simclr")
    key = {(r["variant"], r["order"], r["L"]): r for r in rows}
    lines = [
        f"{'variant':10s} {'order':6s} {'L':>3s} {clock:>8s} {'x higher':>9s} "
        f"{'x simclr':>9s} {'peak MB':>8s} {'diff f64':>9s} {'diff f32':>9s}"
    ]
    for r in rows:
        if r["variant"] == "simclr":
            continue
        ref = key[("higher", r["order"], r["L"])]
        lines.append(
            f"{r['variant']:10s} {r['order']:6s} {r['L']:3d} {r[clock]:8.3f} "
            f"{ref[clock] / r[clock]:8.2f}x {r[clock] / simclr[clock]:8.1f}x "
            f"{r['peak_mb']:8.1f} {r['grad_rel_diff_vs_higher_f64']:9.1e} "
            f"{r['grad_rel_diff_vs_higher']:9.1e}"
        )
    lines.append(
        f"{'simclr':10s} {'-':6s} {'-':>3s} {simclr[clock]:8.3f} {'':9s} {1.0:8.1f}x "
        f"{simclr['peak_mb']:8.1f}"
    )
    lines.append(
        "x higher = higher's time / this time (above 1: faster); diff = max |g - g_higher| / "
        "max |g_higher| of the meta-gradient in float64 and float32"
    )
    peak = report["setup"]["matmul_peak_flops"]
    lines.append(f"measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    for r in rows:
        rate = measure.flop_rate(r["flops"], r[clock], peak)
        lines.append(f"{r['variant']:12s} {r['order']:6s} L={r['L']:2d}: {measure.fmt_flops(rate)}")
    lengths = sorted({r["L"] for r in rows if r["variant"] != "simclr"})
    for name, *_ in VARIANTS:
        for order in ("second", "first"):
            mem = [key[(name, order, L)]["peak_mb"] for L in lengths]
            if len(mem) > 1 and mem[0] > 0:
                growth = ", ".join(f"{m:.0f}" for m in mem)
                lines.append(
                    f"{name} {order}-order peak MB at L = {lengths}: {growth} "
                    f"(x{mem[-1] / mem[0]:.2f} from L={lengths[0]} to L={lengths[-1]})"
                )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--tasks", type=int, default=8, help="B, tasks per meta-batch")
    parser.add_argument("--task-images", type=int, default=10)
    parser.add_argument("--support-views", type=int, default=2)
    parser.add_argument("--query-views", type=int, default=2)
    parser.add_argument("--delta", type=int, default=1, help="bootstrap steps δ")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--inner-lr", type=float, default=BMSSLConfig.inner_lr, help="α")
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (float64 checks included)")
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu", help="which median the ratios use"
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (L=1,2; 1 repeat)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "meta_step.json"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.inner_steps, args.repeats, args.tasks, args.width = [1, 2], 1, 2, 8
    return args


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report = run(args)
    write_json(args.out, report)
    print(table(report))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
