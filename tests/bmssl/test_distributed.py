"""Data-parallel training on 2 gloo processes (CPU) against 1-process training.

Each step's global batch is a pure function of (seed, step), so 2 processes that split it must
end with the weights 1 process reaches on the same batches, up to rounding: BatchNorm statistics
and gradients are summed in another order. The equality runs are in float64, because in float32
Adam turns that rounding into real steps: a parameter whose true gradient is zero (the last
backbone BatchNorm's bias, whose shift the projector's BatchNorm removes) gets a gradient of
float32 noise (~1e-9), and Adam's step ``lr·g/(√v + 1e-8)`` makes it a tenth of lr, a different
tenth in each run. Also: only rank 0 writes, a stopped 2-process run resumes from rank 0's
checkpoint, and the entry points join torchrun's group.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bmssl.distributed import GlobalBatchNorm, global_batchnorm, process_group, shard
from bmssl.evaluate import embed_dataset
from bmssl.meta import BMSSLConfig, BMSSLTrainer, model_for_backend
from bmssl.simclr import SimCLRConfig, SimCLRTrainer

NET = dict(width=8, proj_hidden=16, proj_dim=8, dataset="digits", device="cpu", eval_episodes=10)
SIMCLR = SimCLRConfig(steps=3, eval_every=2, batch_size=16, **NET)  # type: ignore[arg-type]
# meta_batch 3 over 2 processes: shares of 1 and 2 tasks, so the weighting is tested too
BMSSL = BMSSLConfig(steps=2, eval_every=2, task_images=6, meta_batch=3, **NET)  # type: ignore[arg-type]
pytestmark = pytest.mark.distributed


class Float64Images:
    """A dataset whose images come in float64 (everything else is the wrapped dataset's)."""

    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    def get_batch(self, indices) -> torch.Tensor:
        return self.base.get_batch(indices).double()


class SimCLR64(SimCLRTrainer):
    """SimCLR in float64: the encoder, and its images through the trainer's one fetch call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encoder.double()  # the optimiser keeps the same Parameter objects
        self.val_set = Float64Images(self.val_set)

    def _images(self, step, indices) -> torch.Tensor:
        return super()._images(step, indices).double()


class BMSSL64(BMSSLTrainer):
    """BMSSL in float64 (its task sampler fetches float64 images)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encoder.double()
        self._model = model_for_backend(self.encoder, self.config.backend)
        self.sampler.dataset = Float64Images(self.sampler.dataset)
        self.val_set = Float64Images(self.val_set)


BISSL_TINY = [
    "dataset=digits", "device=cpu", "pretext.image_size=16", "pretext.width=4",
    "pretext.proj_hidden=8", "pretext.proj_dim=4", "pretext.steps=2", "pretext.batch_size=8",
    "bilevel.alternations=1", "bilevel.lower_steps=1", "bilevel.upper_steps=1",
    "bilevel.batch_size=8", "bilevel.lower_batch_size=8", "warmup.steps=1", "cg.iters=2",
    "finetune.steps=2", "finetune.batch_size=8", "eval_every=1",
]  # fmt: skip


def _worker(rank: int, world: int, port: int, root: str) -> None:
    """Rank ``rank`` as torchrun starts it (its environment), running every 2-process scenario
    (one spawn: the imports are most of the cost)."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    base = Path(root)
    out: dict[str, object] = {}
    with process_group(torch.device("cpu")):
        out["group"] = (dist.get_backend(), dist.get_rank(), dist.get_world_size())
        # Rank 1 is handed a folder of its own: it must not even create it.
        for name, cls, cfg in (("simclr", SimCLR64, SIMCLR), ("bmssl", BMSSL64, BMSSL)):
            folder = base / (name if rank == 0 else f"{name}-rank{rank}")
            trainer = cls(cfg, folder, progress=False)
            trainer.fit()
            out[name] = {k: v.clone() for k, v in trainer.encoder.state_dict().items()}
            out[f"{name}_history"] = trainer.history
            if name == "simclr":  # the val set embedded by both ranks, batch by batch, and alone
                backbone, val_set = trainer.encoder.backbone.eval(), trainer.val_set
                out["embedded_shared"] = embed_dataset(backbone, val_set, 50, shard=True)
                out["embedded_alone"] = embed_dataset(backbone, val_set, 50)
        # stopped after the step-2 checkpoint, then restarted on the same folder by every rank
        SimCLR64(SIMCLR, base / "cut", progress=False).fit(max_steps=2)
        resumed = SimCLR64(SIMCLR, base / "cut", progress=False)
        resumed.fit()
        out["resumed"] = dict(resumed.encoder.state_dict())
        out["resumed_step"] = resumed.step
        # float32, as shipped
        straight = SimCLRTrainer(SIMCLR, progress=False)
        straight.fit()
        out["float32"] = dict(straight.encoder.state_dict())
    out["left_group"] = not dist.is_initialized()
    # `python -m bissl run` joins the group itself (a fresh port: the first store is closed)
    os.environ["MASTER_PORT"] = str(port + 1)
    from bissl.__main__ import main as bissl_main

    bissl_out = base / ("bissl" if rank == 0 else f"bissl-rank{rank}")
    out["bissl_exit"] = bissl_main(["run", "--out", str(bissl_out), "--quiet", *BISSL_TINY])
    out["bissl_left_group"] = not dist.is_initialized()
    torch.save(out, base / "results" / f"rank{rank}.pt")


def _free_port() -> int:
    """A port with a free neighbour (the worker's second group uses port + 1)."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports")


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    (root / "results").mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2, join=True)
    return root


def _rank(root: Path, rank: int) -> dict:
    return torch.load(root / "results" / f"rank{rank}.pt", weights_only=False)


def _assert_close_states(a: dict, b: dict, **tolerance: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key, **tolerance)  # type: ignore[arg-type]


def test_simclr_two_processes_equal_one(two_process_runs: Path) -> None:
    single = SimCLR64(SIMCLR, progress=False)
    single.fit()
    r0, r1 = _rank(two_process_runs, 0), _rank(two_process_runs, 1)
    _assert_close_states(r0["simclr"], r1["simclr"], rtol=0, atol=0)  # replicas stay identical
    _assert_close_states(r0["simclr"], single.encoder.state_dict(), rtol=1e-9, atol=1e-9)
    # the logged loss is the global batch's, not one rank's half; validation (embedded half by
    # each rank) scores as in one process
    for two, one in zip(r0["simclr_history"], single.history, strict=True):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-12)
        assert two["val_acc"] == pytest.approx(one["val_acc"], rel=1e-12)


def test_bmssl_two_processes_equal_one(two_process_runs: Path) -> None:
    single = BMSSL64(BMSSL, progress=False)
    single.fit()
    r0, r1 = _rank(two_process_runs, 0), _rank(two_process_runs, 1)
    _assert_close_states(r0["bmssl"], r1["bmssl"], rtol=0, atol=0)
    _assert_close_states(r0["bmssl"], single.encoder.state_dict(), rtol=1e-9, atol=1e-9)
    for two, one in zip(r0["bmssl_history"], single.history, strict=True):
        for key in ("loss", "kl", "ce", "val_acc"):
            assert two[key] == pytest.approx(one[key], rel=1e-12)


def test_float32_two_processes_stay_close_to_one(two_process_runs: Path) -> None:
    """As shipped (float32): equal up to Adam-amplified rounding, at most lr per step."""
    single = SimCLRTrainer(SIMCLR, progress=False)
    single.fit()
    steps_lr = SIMCLR.steps * SIMCLR.lr
    for key, value in _rank(two_process_runs, 0)["float32"].items():
        torch.testing.assert_close(value, single.encoder.state_dict()[key], rtol=1e-3,
                                   atol=steps_lr, msg=key)  # fmt: skip


def test_sharded_embedding_equals_one_process(two_process_runs: Path) -> None:
    """Each rank embeds every other batch of the val set; exchanged, the features are bit-identical
    to one process embedding every batch."""
    r0, r1 = _rank(two_process_runs, 0), _rank(two_process_runs, 1)
    assert len(r0["embedded_alone"]) > 2 * 50  # several batches per rank
    for result in (r0, r1):
        assert torch.equal(result["embedded_shared"], result["embedded_alone"])
    assert torch.equal(r0["embedded_shared"], r1["embedded_shared"])


def test_processes_join_and_leave_the_group_from_the_environment(two_process_runs: Path) -> None:
    for rank in (0, 1):
        result = _rank(two_process_runs, rank)
        assert result["group"] == ("gloo", rank, 2)
        assert result["left_group"] and result["bissl_left_group"]


def test_only_rank_zero_writes(two_process_runs: Path) -> None:
    for name in ("simclr", "bmssl"):
        assert not (two_process_runs / f"{name}-rank1").exists()
        written = {p.name for p in (two_process_runs / name).rglob("*") if p.is_file()}
        assert {"last.pt", "best.pt", "history.json", "metrics.csv"} <= written
        history = json.loads((two_process_runs / name / "history.json").read_text())
        assert [h["step"] for h in history] == [2.0, float({"simclr": 3, "bmssl": 2}[name])][
            : len(history)
        ]


def test_stopped_two_process_run_resumes_to_the_same_weights(two_process_runs: Path) -> None:
    r0, r1 = _rank(two_process_runs, 0), _rank(two_process_runs, 1)
    assert r0["resumed_step"] == r1["resumed_step"] == SIMCLR.steps
    # the same processes, ops and batches: bit-identical to the uninterrupted 2-process run
    _assert_close_states(r0["resumed"], r0["simclr"], rtol=0, atol=0)
    _assert_close_states(r1["resumed"], r0["simclr"], rtol=0, atol=0)


def test_bissl_entry_point_trains_data_parallel_and_rank_zero_writes(
    two_process_runs: Path,
) -> None:
    assert _rank(two_process_runs, 0)["bissl_exit"] == _rank(two_process_runs, 1)["bissl_exit"] == 0
    assert not (two_process_runs / "bissl-rank1").exists()
    run = two_process_runs / "bissl"
    assert (run / "metrics.json").is_file() and (run / "finetuned.pt").is_file()
    assert (run / "bissl" / "checkpoints" / "last.pt").is_file()
    assert len(list(run.glob("pretext-*.pt"))) == 1


# -- pieces -----------------------------------------------------------------------------------------


def test_shard_covers_in_rank_order() -> None:
    for n, world in ((16, 2), (3, 2), (7, 3), (2, 2)):
        blocks = [range(n)[shard(n, r, world)] for r in range(world)]
        assert [i for b in blocks for i in b] == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    with pytest.raises(ValueError):
        shard(4, 2, 2)


def test_global_batchnorm_is_batchnorm_in_one_process() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    reference = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    reference.load_state_dict(net.state_dict())
    keys = list(net.state_dict())
    global_batchnorm(net)
    assert isinstance(net[1], GlobalBatchNorm) and list(net.state_dict()) == keys
    x = torch.rand(4, 1, 6, 6)
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)
    torch.testing.assert_close(net[1].running_var, reference[1].running_var, rtol=0, atol=0)


def test_simclr_batch_is_a_function_of_seed_and_step() -> None:
    a = SimCLRTrainer(SIMCLR, progress=False)
    b = SimCLRTrainer(SIMCLR, progress=False)
    torch.manual_seed(123)  # the global RNG plays no part
    for step in (0, 5):
        va, vb = a.local_views(step), b.local_views(step)
        for x, y in zip(va, vb, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert not torch.equal(a.local_views(0)[0], a.local_views(1)[0])
    assert (a.batch_indices(0)[0] != a.batch_indices(1)[0]).any()
    # the plan a loader's workers get: picklable, and rank r's block of the global batch
    plan = pickle.loads(pickle.dumps(a.plan))
    halves = [dataclasses.replace(plan, rank=r, world=2)(5) for r in (0, 1)]
    assert np.array_equal(np.concatenate(halves), a.batch_indices(5)[0])
    assert len(set(a.batch_indices(5)[0])) == SIMCLR.batch_size  # distinct images


def test_task_sampler_takes_prefetched_images() -> None:
    """The seam a prefetching loader uses: the step's image indices, then its images."""
    trainer = BMSSLTrainer(BMSSL, progress=False)
    sampler = trainer.sampler
    fetched = sampler.dataset.get_batch(sampler.image_indices(4))
    a, b = sampler.sample(4), sampler.sample(4, images=fetched)
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    assert torch.equal(a.image_indices.reshape(-1), torch.from_numpy(sampler.image_indices(4)))


# -- entry points under torchrun's environment -------------------------------------------------------


def test_torchrun_resumes_a_run_and_rank_zero_writes(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m bmssl train`` continues a 1-process run from its
    last.pt (the global batches do not depend on the process count): rank 0 alone reports the
    resume, prints the JSON line and writes the record."""
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    from bmssl.__main__ import main as bmssl_main

    out = tmp_path / "run"
    options = [
        "train", "simclr", "--out", str(out), "--quiet", "batch_size=8", "width=4",
        "proj_hidden=8", "proj_dim=4", "dataset=digits", "device=cpu", "eval_episodes=5",
        "eval_every=1",
    ]  # fmt: skip
    bmssl_main([*options, "steps=1"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    launch = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "bmssl"]
    run = subprocess.run([*launch, *options, "steps=2"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len([line for line in run.stdout.splitlines() if line.startswith("{")]) == 1
    assert run.stderr.count("resuming from") == 1
    assert [h["step"] for h in json.loads((out / "history.json").read_text())] == [1.0, 2.0]
    assert json.loads((out / "metrics.json").read_text())["step"] == 2.0


def test_commands_that_run_in_one_process_are_refused(monkeypatch, capsys) -> None:
    from bmssl.__main__ import main as bmssl_main

    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv in (["methods"], ["eval", "--out", "nowhere"]):
        with pytest.raises(SystemExit) as exit_:
            bmssl_main(argv)
        assert exit_.value.code == 2
        assert "WORLD_SIZE=2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bmssl_main(["train", "protonet", "device=cpu"])
    assert "method 'protonet' trains in one process" in capsys.readouterr().err


def test_device_follows_local_rank(monkeypatch) -> None:
    from bmssl.errors import UserError
    from bmssl.trainer import resolve_device

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(UserError):
            resolve_device("cuda")
        return
    if torch.cuda.device_count() > 1:
        assert resolve_device("auto") == torch.device("cuda", 1)
    else:
        with pytest.raises(UserError, match="LOCAL_RANK=1"):
            resolve_device("cuda")
    with pytest.raises(UserError, match="one GPU"):
        resolve_device("cuda:0")
