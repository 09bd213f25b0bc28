"""Helper of ``benchmarks/gpu_check.sh``: paper-preset step rates, bf16 against fp32, summary.

    python benchmarks/gpu_check.py steps --out steps.json [--tiny]   # steps/s of each step type
    python benchmarks/gpu_check.py bf16 --out bf16.json [--tiny]     # a short SimCLR run, both
    python benchmarks/gpu_check.py summarize --dir DIR               # DIR/gpu_check.{json,md}

``steps`` times each paper-preset step type on random inputs of the preset's shapes (the
images' values do not change the cost): SimCLR (Conv4-64, batch 256, 28 px 1-channel and 84 px
RGB), ProtoNet (20-way 1-shot, 5 queries), BMSSL with the paper preset (64 images × 4 tasks,
K = Q = 2, L = δ = 1) by backend and for its first-order and δ = 0 rows, and BiSSL's steps on
torchvision's ResNet-18 at 96 px, batch 256 (pretext SimCLR, lower NT-Xent + proximal term,
upper step with 5 layerwise CG iterations, fine-tuning). Each runs up to ``--steps`` steps or
``--cap`` seconds after one warm-up step. ``--tiny`` shrinks every shape (a CPU dry run).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peers import measure  # noqa: E402
from bmssl.losses import nt_xent  # noqa: E402
from bmssl.nets import build_encoder  # noqa: E402
from bmssl.precision import autocast, configure_device  # noqa: E402

Step = Callable[[], object]


def rate(step: Step, steps: int, cap: float, device: torch.device) -> dict[str, float]:
    """Steps per second of ``step`` over up to ``steps`` runs or ``cap`` seconds (one warm-up)."""
    step()
    measure.sync(device)
    start, done = time.perf_counter(), 0
    while done < steps and (done == 0 or time.perf_counter() - start < cap):
        step()
        done += 1
    measure.sync(device)
    seconds = time.perf_counter() - start
    return {"steps": done, "seconds": seconds, "steps_per_s": done / seconds}


def _images(n: int, channels: int, size: int, device: torch.device) -> torch.Tensor:
    return torch.rand(n, channels, size, size, device=device)


def _conv4(channels: int, size: int, width: int, device: torch.device) -> torch.nn.Module:
    """Table 1's paper network (Conv4, projector 512 → 128) at ``width`` (64 in the paper)."""
    return build_encoder("conv4", channels, size, width, "track", 512, 128).to(device).train()


def simclr_step(
    channels: int, size: int, batch: int, device: torch.device, precision="fp32", width=64
):
    """SimCLR's step: batched ``strong`` views, Conv4, NT-Xent, Adam."""
    from bmssl.data import SSLViews

    encoder = _conv4(channels, size, width, device)
    views = SSLViews("strong", size, channels)
    opt = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    images = _images(batch, channels, size, device)
    g = torch.Generator().manual_seed(0)
    losses: list[torch.Tensor] = []

    def step() -> None:
        v1, v2 = views.pair(images, g)
        with autocast(device, precision):
            z = encoder(torch.cat([v1, v2])).float()
            loss = nt_xent(z[:batch], z[batch:], 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())

    step.losses = losses  # type: ignore[attr-defined]
    return step


def protonet_step(channels: int, size: int, way: int, device: torch.device, width=64) -> Step:
    """ProtoNet's episode: ``way``-way 1-shot with 5 queries per class, prototype CE, Adam."""
    from bmssl.losses import prototype_cross_entropy

    encoder = _conv4(channels, size, width, device)
    opt = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    x = _images(way * 6, channels, size, device)
    ys, yq = torch.arange(way, device=device), torch.arange(way, device=device).repeat(5)

    def step() -> None:
        z = encoder.features(x)
        loss = prototype_cross_entropy(z[:way], ys, z[way:], yq, way, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bmssl_step(channels: int, size: int, tiny: bool, device: torch.device, **over: Any) -> Step:
    """BMSSL's meta-step with the paper preset (``over`` changes backend, order or δ), Adam."""
    from bmssl.config import load_config
    from bmssl.meta import BMSSLConfig, meta_gradient, model_for_backend
    from bmssl.tasks import TaskBatch

    cfg = load_config(BMSSLConfig, ROOT / "bmssl" / "presets" / "bmssl-paper.yaml")
    for key, value in over.items():
        setattr(cfg, key, value)
    width = 8 if tiny else 64
    if tiny:
        cfg.task_images, cfg.meta_batch = 4, 2
    b, n, k, q = cfg.meta_batch, cfg.task_images, cfg.support_views, cfg.query_views
    batch = TaskBatch(
        torch.rand(b, n * k, channels, size, size, device=device),
        torch.rand(b, n * q, channels, size, size, device=device), n, k, q,
        torch.zeros(b, n, dtype=torch.long),
    )  # fmt: skip
    encoder = _conv4(channels, size, width, device)
    model = model_for_backend(encoder, cfg.backend)
    params = dict(encoder.named_parameters())
    opt = torch.optim.Adam(encoder.parameters(), lr=cfg.outer_lr)

    def step() -> None:
        grads = meta_gradient(params, model, batch, cfg).grads
        for name, p in params.items():
            p.grad = grads[name]
        opt.step()

    return step


def _resnet(size: int, device: torch.device):
    return build_encoder("resnet18", 3, size, 64, "track", 512, 128).to(device).train()


def bissl_steps(size: int, batch: int, device: torch.device) -> dict[str, Step]:
    """BiSSL's four step types on ResNet-18 (pretext, lower, upper, fine-tune)."""
    from benchmarks.peers.upper import Problem, ours_side
    from bissl.objectives import DownstreamModel

    encoder = _resnet(size, device)
    model_d = DownstreamModel(copy.deepcopy(encoder.backbone), 10).to(device).train()
    x, x1, x2 = (_images(batch, 3, size, device) for _ in range(3))
    y = torch.randint(0, 10, (batch,), device=device)
    lower_opt = torch.optim.SGD(encoder.parameters(), lr=0.1, momentum=0.9)
    tune_opt = torch.optim.SGD(model_d.parameters(), lr=0.01, momentum=0.9)

    def pretext() -> None:
        z = encoder(torch.cat([x1, x2]))
        loss = nt_xent(z[:batch], z[batch:], 0.5)
        lower_opt.zero_grad(set_to_none=True)
        loss.backward()
        lower_opt.step()

    def lower() -> None:
        z = encoder(torch.cat([x1, x2]))
        pairs = zip(encoder.backbone.parameters(), model_d.backbone.parameters())
        prox = sum((p - d.detach()).pow(2).sum() for p, d in pairs)
        loss = nt_xent(z[:batch], z[batch:], 0.5) + 0.0005 * prox
        lower_opt.zero_grad(set_to_none=True)
        loss.backward()
        lower_opt.step()

    def finetune() -> None:
        loss = F.cross_entropy(model_d(x), y)
        tune_opt.zero_grad(set_to_none=True)
        loss.backward()
        tune_opt.step()

    problem = Problem(encoder, model_d, x, y, x1, x2, 1e-3, 10.0, 5)
    upper = ours_side(problem, mode="layerwise")
    return {"bissl pretext": pretext, "bissl lower": lower, "bissl upper (5 layerwise CG)": upper,
            "bissl fine-tune": finetune}  # fmt: skip


def step_types(tiny: bool, device: torch.device) -> dict[str, Callable[[], Step]]:
    """Builders of every paper-preset step type (built one at a time, to bound memory)."""
    big, batch, way, res, res_batch = (28, 8, 5, 32, 4) if tiny else (84, 256, 20, 96, 256)
    w = 8 if tiny else 64
    out: dict[str, Callable[[], Step]] = {
        "simclr omniglot 28px": lambda: simclr_step(1, 28, batch, device, width=w),
        f"simclr miniimagenet {big}px": lambda: simclr_step(3, big, batch, device, width=w),
        "protonet omniglot": lambda: protonet_step(1, 28, way, device, w),
        f"protonet miniimagenet {big}px": lambda: protonet_step(3, big, way, device, w),
    }
    for name, channels, size in (("omniglot", 1, 28), ("miniimagenet", 3, big)):
        for label, over in (
            ("bmssl func+vmap", {}),
            ("bmssl autograd", {"backend": "autograd"}),
            ("bmssl first-order autograd", {"backend": "autograd", "first_order": True}),
            ("meta-ssl (δ=0) autograd", {"backend": "autograd", "bootstrap_steps": 0}),
        ):
            out[f"{label} {name}"] = lambda c=channels, s=size, o=over: bmssl_step(
                c, s, tiny, device, **o
            )
    for name in ("bissl pretext", "bissl lower", "bissl upper (5 layerwise CG)", "bissl fine-tune"):
        out[name] = lambda name=name: bissl_steps(res, res_batch, device)[name]
    return out


def cmd_steps(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Steps per second of every step type; a type that fails is recorded with its error."""
    rows: dict[str, Any] = {}
    for name, build in step_types(args.tiny, device).items():
        try:
            rows[name] = rate(build(), args.steps, args.cap, device)
        except (
            Exception
        ) as err:  # one step type failing (e.g. out of memory) must not stop the rest
            rows[name] = {"failed": f"{type(err).__name__}: {str(err)[:300]}"}
        if device.type == "cuda":
            rows[name]["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.empty_cache()
        print(f"{name}: {rows[name]}", flush=True)
        _write(args.out, {"device": str(device), "tiny": args.tiny, "steps": rows})  # so far
    return {"device": str(device), "tiny": args.tiny, "steps": rows}


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


def cmd_bf16(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """A short SimCLR run (84-px RGB Conv4-64, batch 256) in fp32 and in bf16 from the same
    initial weights and views: steps per second and final loss of each."""
    size, batch = (28, 8) if args.tiny else (84, 256)
    out: dict[str, Any] = {"device": str(device), "steps": args.steps}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        step = simclr_step(3, size, batch, device, precision, width=8 if args.tiny else 64)
        timing = rate(step, args.steps, args.cap, device)
        losses = step.losses  # type: ignore[attr-defined]
        out[precision] = {**timing, "final_loss": float(losses[-1]), "first_loss": float(losses[0])}
        print(f"{precision}: {out[precision]}", flush=True)
    out["bf16_speedup"] = out["bf16"]["steps_per_s"] / out["fp32"]["steps_per_s"]
    return out


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cmd_summarize(folder: Path) -> dict[str, Any]:
    """``gpu_check.json`` and ``gpu_check.md`` from the parts' status file and JSON outputs."""
    parts = []
    status = folder / "parts.tsv"
    for line in status.read_text().splitlines() if status.exists() else []:
        name, state, rc, seconds = line.split("\t")
        parts.append({"part": name, "status": state, "rc": int(rc), "seconds": float(seconds)})
    outputs = {p.stem: _load(p) for p in sorted(folder.glob("*.json")) if p.stem != "gpu_check"}
    summary = {"parts": parts, "outputs": outputs}
    (folder / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
    (folder / "gpu_check.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = ["# GPU check", "", "| part | status | exit | seconds |", "|---|---|---:|---:|"]
    for p in summary["parts"]:
        lines.append(f"| {p['part']} | {p['status']} | {p['rc']} | {p['seconds']:.0f} |")
    steps = (summary["outputs"].get("steps") or {}).get("steps", {})
    if steps:
        lines += ["", "| paper-preset step | steps/s | steps | peak GB |", "|---|---:|---:|---:|"]
        for name, r in steps.items():
            if "failed" in r:
                lines.append(f"| {name} | failed: {r['failed'][:80]} | | |")
            else:
                peak = f"{r['peak_gb']:.1f}" if "peak_gb" in r else ""
                lines.append(f"| {name} | {r['steps_per_s']:.2f} | {r['steps']} | {peak} |")
    bf16 = summary["outputs"].get("bf16")
    if bf16:
        lines += ["", f"bf16 / fp32 SimCLR steps per second: {bf16['bf16_speedup']:.2f}x; final "
                  f"loss fp32 {bf16['fp32']['final_loss']:.4f}, bf16 {bf16['bf16']['final_loss']:.4f}"]  # fmt: skip
    peers = summary["outputs"].get("peers")
    if peers:
        worst = peers["goals"]["worst_ratio"]
        lines += ["", f"worst ratio over peers: {worst['median']:.2f}× ({worst.get('path')})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("steps", "bf16", "summarize"))
    parser.add_argument("--out", type=Path, help="JSON output (steps, bf16)")
    parser.add_argument("--dir", type=Path, help="the check's folder (summarize)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cap", type=float, default=10.0, help="seconds per step type")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU dry run)")
    args = parser.parse_args(argv)
    if args.command == "summarize":
        cmd_summarize(args.dir)
        return
    name = args.device
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    )
    configure_device(device)
    result = cmd_steps(args, device) if args.command == "steps" else cmd_bf16(args, device)
    _write(args.out, result)


if __name__ == "__main__":
    main()
