"""Provenance in every results file, ``python -m reproduce verify`` and ``compare``, on a tiny
Table 1 built once in this process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reproduce import compare, verify
from tests.reproduce.tiny_profile import TINY_PROFILE


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """The results folder of a tiny Table 1 (read-only for the tests: copy before editing)."""
    from reproduce import table1

    root = tmp_path_factory.mktemp("verify")
    profile = root / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    table1.main(["--config", str(profile), "--out", str(root / "res"), "--quiet"])
    return root / "res" / "tiny"


def copy_of(table: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(table, tmp_path / "copy" / "tiny"))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def test_every_results_file_holds_the_provenance_record(table: Path) -> None:
    data = json.loads((table / "table1.json").read_text())
    record = data["meta"]["provenance"]
    assert set(record) >= {"code", "python", "packages", "machine", "torch", "environment",
                           "command", "datasets", "configs", "profile", "wall_time_s"}  # fmt: skip
    assert {"commit", "dirty", "diff_sha256", "version"} <= set(record["code"])
    assert {"torch", "torchvision", "higher", "ray", "numpy", "numba"} <= set(record["packages"])
    assert {"cpu", "cpu_cores", "gpus", "gpu_count", "cuda", "cudnn"} <= set(record["machine"])
    assert {"threads", "deterministic_algorithms", "tf32_matmul"} <= set(record["torch"])
    assert record["datasets"]["digits 28px"]["kind"] == "generated"
    assert record["command"]["table"] == "table1" and "--quiet" in record["command"]["argv"]
    assert record["configs"]["simclr"]["digits__seed1"]["steps"] == 3  # every cell's config
    assert record["profile"]["episodes"] == 20 and record["wall_time_s"] > 0
    assert (table / "table1.md").read_text().rstrip().splitlines()[-1].startswith("Provenance: ")
    claims = json.loads((table / "claims.json").read_text())
    assert claims["provenance"] == record
    assert "Provenance: " in (table / "claims.md").read_text()
    run_record = json.loads((table / "runs/simclr/digits/seed0/provenance.json").read_text())
    assert run_record["method"] == "simclr" and run_record["code"] == record["code"]


def test_verify_retrains_cells_from_scratch_bit_identical_on_this_machine(
    table, capsys, monkeypatch
) -> None:
    before = {p: p.stat().st_mtime_ns for p in table.rglob("*") if p.is_file()}
    names = ["simclr__digits__seed1", "random__digits__seed0"]
    code, out, _ = run(verify.main, [str(table), "--cell", names[0], "--cell", names[1]], capsys)
    assert code == 0, out
    assert "expecting bit-identical cells: same kind of machine" in out
    for name in names:
        assert f"{name}  bit-identical" in out
    assert "verdict: 2 bit-identical, 0 within the seed interval, 0 mismatch(es)" in out
    assert {p: p.stat().st_mtime_ns for p in table.rglob("*") if p.is_file()} == before
    monkeypatch.chdir(table.parent)  # a relative folder, from elsewhere than the table's cwd
    code, out, err = run(verify.main, ["tiny", "--cells", "1"], capsys)
    assert code == 0 and "cells drawn with --seed" in err and "1 bit-identical" in out


def test_verify_exits_1_on_a_tampered_cell(table, tmp_path, capsys) -> None:
    folder = copy_of(table, tmp_path)

    def tamper(cell: dict) -> None:
        cell["cells"][0][2]["mean"] += 0.01

    edit_json(folder / "cells" / "simclr__digits__seed0.json", tamper)
    code, out, _ = run(verify.main, [str(folder), "--cell", "simclr__digits__seed0"], capsys)
    assert code == 1 and "MISMATCH: not bit-identical on the same kind of machine" in out
    # On another kind of machine the seed interval is the tolerance: 0.01 is inside it, 500 points are not.
    edit_json(
        folder / "table1.json", lambda d: d["meta"]["provenance"]["packages"].update(torch="0.0")
    )
    code, out, _ = run(verify.main, [str(folder), "--cell", "simclr__digits__seed0"], capsys)
    assert code == 0 and "another kind of machine: torch 0.0 ->" in out
    assert "within the seed interval: digits 5w1s" in out
    edit_json(
        folder / "cells" / "random__digits__seed1.json",
        lambda c: c["cells"][1][2].update(mean=500.0),
    )
    code, out, _ = run(verify.main, [str(folder), "--cell", "random__digits__seed1"], capsys)
    assert code == 1 and "MISMATCH beyond the seed interval" in out
    assert "digits 5w5s 500.00 ->" in out


def test_verify_exits_2_on_a_folder_it_cannot_read(table, tmp_path, capsys) -> None:
    code, _, err = run(verify.main, [str(tmp_path / "nothing")], capsys)
    assert code == 2 and "is not a folder" in err
    code, _, err = run(verify.main, [str(tmp_path)], capsys)
    assert code == 2 and "holds no results table" in err
    folder = copy_of(table, tmp_path)
    (folder / "cells" / "random__digits__seed0.json").unlink()
    code, _, err = run(verify.main, [str(folder), "--cell", "random__digits__seed0"], capsys)
    assert code == 2 and "random__digits__seed0.json" in err and "cannot be read" in err
    code, _, err = run(verify.main, [str(folder), "--cell", "nope"], capsys)
    assert code == 2 and "'nope' is not a cell" in err
    (folder / "table1.json").write_text("{not json")
    code, _, err = run(verify.main, [str(folder)], capsys)
    assert code == 2 and "cannot be read" in err


def test_compare_prints_paired_differences_and_provenance_differences(table, tmp_path, capsys):
    other = copy_of(table, tmp_path)

    def another_commit(data: dict) -> None:
        data["meta"]["provenance"]["code"]["commit"] = "f" * 40
        data["meta"]["provenance"]["configs"]["simclr"]["digits__seed0"]["steps"] = 4
        values = data["rows"]["SimCLR"]["digits 5w1s"]["seed_means"]
        data["rows"]["SimCLR"]["digits 5w1s"]["seed_means"] = [values[0] + 2.0, values[1] + 4.0]

    edit_json(other / "table1.json", another_commit)
    code, out, _ = run(compare.main, [str(table), str(other)], capsys)
    assert code == 0, out
    assert "| Method | Column | A | B | Δ B − A [95% CI] | p | identical seeds |" in out
    assert "| Random init | digits 5w1s |" in out and "0 (identical) | – | 2/2 |" in out
    assert "+3.00 [" in out and "| 0/2 |" in out  # SimCLR 5w1s: paired over the 2 seeds
    assert "3 of 4 cells bit-identical on every shared seed" in out
    commit = json.loads((table / "table1.json").read_text())["meta"]["provenance"]["code"]["commit"]
    assert f"code.commit: {commit!r} -> {'f' * 40!r}" in out
    assert "configs: steps differs in 1 of 4 cells, e.g. simclr.digits__seed0: 3 -> 4" in out
    code, _, err = run(compare.main, [str(table), str(tmp_path / "none")], capsys)
    assert code == 2 and "is not a folder" in err
