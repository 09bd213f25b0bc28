import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import torch

from bmssl.checkpoints import latest_checkpoint
from bmssl.io import atomic_write
from bmssl.pretrain import random_init_encoder
from bmssl.protonet import ProtoNetConfig, ProtoNetTrainer
from bmssl.simclr import SimCLRConfig, SimCLRTrainer

TINY = dict(width=8, proj_hidden=16, proj_dim=8, batch_size=16, eval_episodes=10, dataset="digits")


def assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_simclr_resume_equals_uninterrupted(tmp_path):
    cfg = SimCLRConfig(steps=6, eval_every=2, **TINY)
    full = SimCLRTrainer(cfg, out_dir=tmp_path / "full", progress=False)
    full.fit()
    first = SimCLRTrainer(cfg, out_dir=tmp_path / "cut", progress=False)
    first.fit(max_steps=4)  # stops after the step-4 checkpoint, as a killed run would leave it
    assert first.step == 4
    resumed = SimCLRTrainer(cfg, out_dir=tmp_path / "cut", progress=False)
    metrics = resumed.fit()
    assert resumed.step == 6 and metrics["step"] == 6
    assert_same_weights(full.encoder, resumed.encoder)
    assert [h["val_acc"] for h in full.history] == [h["val_acc"] for h in resumed.history]


def test_killed_process_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a real training process mid-run, restart it, compare with an uninterrupted run."""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time, torch
            sys.path.insert(0, {os.getcwd()!r})
            torch.set_num_threads(1)
            from bmssl.simclr import SimCLRConfig, SimCLRTrainer
            cfg = SimCLRConfig(steps=8, eval_every=1, **{TINY!r})
            trainer = SimCLRTrainer(cfg, out_dir=sys.argv[1], progress=False)
            slow = len(sys.argv) > 2
            def on_eval(step, metrics, path):
                print("step", step, flush=True)
                if slow and step >= 3:
                    time.sleep(60)  # wait here to be killed
            trainer.fit(on_eval=on_eval)
            torch.save(trainer.encoder.state_dict(), sys.argv[1] + "/final.pt")
            """
        )
    )
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run), "slow"], stdout=subprocess.PIPE, text=True
    )
    for line in proc.stdout:
        if line.strip() == "step 3":
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "final.pt").exists()
    subprocess.run([sys.executable, str(script), str(run)], check=True, capture_output=True)
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "straight")], check=True, capture_output=True
    )
    a = torch.load(run / "final.pt")
    b = torch.load(tmp_path / "straight" / "final.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_protonet_learns_and_resumes(tmp_path):
    cfg = ProtoNetConfig(
        steps=4,
        eval_every=2,
        n_way=5,
        width=8,
        proj_hidden=16,
        proj_dim=8,
        eval_episodes=10,
        dataset="digits",
    )
    full = ProtoNetTrainer(cfg, out_dir=tmp_path / "a", progress=False)
    full.fit()
    part = ProtoNetTrainer(cfg, out_dir=tmp_path / "b", progress=False)
    part.fit(max_steps=2)
    rest = ProtoNetTrainer(cfg, out_dir=tmp_path / "b", progress=False)
    rest.fit()
    assert_same_weights(full.encoder, rest.encoder)


def test_random_init_is_seeded():
    cfg = SimCLRConfig(**TINY)
    assert_same_weights(random_init_encoder(cfg), random_init_encoder(cfg))


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "x.txt"
    atomic_write(path, lambda f: f.write("old"))

    def boom(f):
        f.write("partial")
        raise RuntimeError("killed")

    with contextlib.suppress(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]
    (tmp_path / "step_2.pt").touch()
    (tmp_path / "step_10.pt").touch()
    assert latest_checkpoint(tmp_path).name == "step_10.pt"


def test_bf16_first_order_steps_train_and_second_order_refuses():
    """precision=bf16 autocasts SimCLR's and ProtoNet's forward passes (finite losses, float32
    weights); BMSSL's meta-gradient refuses it with a message saying why."""
    import pytest

    from bmssl.config import load_config
    from bmssl.errors import UserError
    from bmssl.meta import BMSSLConfig

    simclr = SimCLRTrainer(
        SimCLRConfig(steps=2, eval_every=2, precision="bf16", **TINY), progress=False
    )
    proto = ProtoNetTrainer(
        ProtoNetConfig(steps=2, eval_every=2, n_way=5, precision="bf16", dataset="digits", width=8,
                       proj_hidden=16, proj_dim=8, eval_episodes=10),
        progress=False,
    )  # fmt: skip
    for trainer in (simclr, proto):
        logs = trainer.train_step(0)
        assert torch.isfinite(torch.tensor(logs["loss"]))
        assert all(p.dtype == torch.float32 for p in trainer.encoder.parameters())
    with pytest.raises(UserError, match="precision=bf16 is not available for BMSSL"):
        load_config(BMSSLConfig, None, ["precision=bf16"])
