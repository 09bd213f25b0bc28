"""benchmarks/gpu_check.sh on the CPU: a part that fails is recorded and the others still run,
and the summary (JSON and Markdown) is written; the helper's tiny step rates and bf16 run work.
Nothing here is timed."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _fake_python(tmp_path: Path) -> Path:
    """A python that fails the peer benchmark with exit 3 and runs everything else."""
    fake = tmp_path / "fakepy"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do [[ "$a" == *bench_peers.py ]] && exit 3; done\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    fake.chmod(0o755)
    return fake


def test_dry_run_records_a_failed_part_and_runs_the_rest(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, OUT=str(out), PARTS="peers bf16", PYTHON=str(_fake_python(tmp_path)))
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 1, done.stdout + done.stderr  # a part failed
    status = [line.split("\t") for line in (out / "parts.tsv").read_text().splitlines()]
    assert [(s[0], s[1], s[2]) for s in status] == [("peers", "failed", "3"), ("bf16", "ok", "0")]
    summary = json.loads((out / "gpu_check.json").read_text())
    bf16 = summary["outputs"]["bf16"]
    assert bf16["fp32"]["steps"] >= 1 and bf16["bf16"]["steps"] >= 1 and bf16["bf16_speedup"] > 0
    markdown = (out / "gpu_check.md").read_text()
    assert "| peers | failed | 3 |" in markdown and "| bf16 | ok | 0 |" in markdown


def test_summary_lists_step_rates_and_failed_step_types(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks import gpu_check

    (tmp_path / "parts.tsv").write_text("steps\tok\t0\t12\n")
    steps = {"a": {"steps": 3, "seconds": 1.5, "steps_per_s": 2.0}, "b": {"failed": "OOM"}}
    (tmp_path / "steps.json").write_text(json.dumps({"steps": steps}))
    gpu_check.cmd_summarize(tmp_path)
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| a | 2.00 | 3 |" in markdown and "| b | failed: OOM" in markdown
