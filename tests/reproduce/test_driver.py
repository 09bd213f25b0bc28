"""reproduce.driver and the pool's groups: the skeleton every table runs on, with a fake table."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from reproduce.driver import CellRef, TablePlan, TableSpec, missing_jobs, run_table
from reproduce.pool import run_jobs
from reproduce.tables import CellCache, Table, prune_weights


@dataclass(frozen=True)
class FakeJob:
    refs: tuple[CellRef, ...]
    run_dir: Path
    group: str
    cost: float = 1.0


def run_fake(job: FakeJob) -> dict:
    """Records that it ran (a line per run in the run folder) and returns one value per cell."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    with (job.run_dir / "ran.txt").open("a") as log:
        log.write(f"{os.getpid()}\n")
    (job.run_dir / "last.pt").write_bytes(b"weights")
    (job.run_dir / "backbone.pt").write_bytes(b"backbone")
    return {(r.row, r.column): {"value": len(r.column)} for r in job.refs}


class FakeTable(TableSpec):
    name = "fake"
    run = staticmethod(run_fake)

    def __init__(self, fingerprint: str = "v1", keep: bool = True) -> None:
        self.fingerprint, self.keep = fingerprint, keep

    def build_parser(self) -> argparse.ArgumentParser:
        from reproduce.profiles import table_parser

        return table_parser("fake", "", "table1", "results/fake", "", "")

    def plan(self, args: argparse.Namespace) -> TablePlan:
        profile = argparse.Namespace(keep_checkpoints=self.keep, profile="p")
        return TablePlan(profile, Path(args.out) / "p")

    def jobs(self, plan: TablePlan, fresh: bool, progress: bool) -> list[FakeJob]:
        return [
            FakeJob((CellRef(row, f"col{i}", self.fingerprint),), plan.out / "runs" / row, row)
            for row in ("a", "b")
            for i in range(2)
        ]

    def assemble(self, plan: TablePlan, cells, elapsed: float) -> Table:
        table = Table("fake", ["col0", "col1"])
        for (row, column), cell in cells.items():
            table.set(row, column, str(cell["value"]))
        table.write(plan.out, "fake", meta={"profile": "p"})
        return table


def runs(out: Path, row: str) -> int:
    path = out / "p" / "runs" / row / "ran.txt"
    return len(path.read_text().split()) if path.is_file() else 0


def test_cached_cells_are_reused_and_other_settings_rerun(tmp_path: Path, capsys) -> None:
    out = tmp_path / "res"
    table = run_table(FakeTable(), ["--out", str(out), "--quiet"])
    assert table.rows == {"a": {"col0": "4", "col1": "4"}, "b": {"col0": "4", "col1": "4"}}
    assert runs(out, "a") == 2 and runs(out, "b") == 2
    assert "| a | 4 | 4 |" in capsys.readouterr().out
    assert json.loads((out / "p" / "claims.json").read_text())["table"] == "fake"
    run_table(FakeTable(), ["--out", str(out), "--quiet"])
    assert runs(out, "a") == 2  # every cell cached under the same fingerprint: nothing ran
    run_table(FakeTable("v2"), ["--out", str(out), "--quiet"])
    assert runs(out, "a") == 4  # other settings: every job again
    run_table(FakeTable("v2"), ["--out", str(out), "--quiet", "--fresh"])
    assert runs(out, "b") == 6


def test_keep_checkpoints_false_prunes_weights_but_keeps_the_backbone(tmp_path: Path) -> None:
    out = tmp_path / "res"
    run_table(FakeTable(keep=False), ["--out", str(out), "--quiet"])
    run_dir = out / "p" / "runs" / "a"
    assert not (run_dir / "last.pt").exists() and (run_dir / "backbone.pt").is_file()
    assert prune_weights(run_dir) == 0  # nothing more to free


def test_jobs_of_one_group_run_in_one_worker_in_order(tmp_path: Path) -> None:
    out = tmp_path / "res"
    run_table(FakeTable(), ["--out", str(out), "--quiet", "--jobs", "2"])
    for row in ("a", "b"):
        pids = (out / "p" / "runs" / row / "ran.txt").read_text().split()
        assert len(pids) == 2 and len(set(pids)) == 1  # one worker ran both jobs of the group
    order: list[int] = []
    run_jobs([3, 1, 4, 1, 5], abs, 1, lambda job, result: order.append(job), group=lambda j: j % 2)
    assert order == [3, 1, 1, 5, 4]  # groups in order of first appearance, each in its order


def test_missing_jobs_reads_the_cache(tmp_path: Path) -> None:
    cache = CellCache(tmp_path)
    done = FakeJob((CellRef("a", "c", "f"),), tmp_path, "g")
    half = FakeJob((CellRef("a", "c", "f"), CellRef("a", "d", "f")), tmp_path, "g")
    cache.put("a", "c", {"value": 1}, "f")
    assert missing_jobs([done, half], cache, fresh=False) == [half]
    assert missing_jobs([done, half], cache, fresh=True) == [done, half]


def test_bad_jobs_flag_exits_2(tmp_path: Path, capsys) -> None:
    from reproduce import table1

    with pytest.raises(SystemExit) as exit_info:
        table1.main(["--jobs", "0", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "--jobs must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
