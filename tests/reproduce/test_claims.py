"""reproduce.claims and reproduce.significance: verdicts, the speed measure, marks and footers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reproduce.claims import claims_of, main, speed, views_to_reach, write_claims
from reproduce.significance import mark_table
from reproduce.tables import Table

LABELS = {"simclr": "SimCLR", "bmssl": "BMSSL (δ > 0)", "meta-ssl": "Meta-SSL (δ = 0)"}


def table_json(shift: float, seeds: int, spread: float = 1.0, curves=None) -> dict:
    """A Table 1 JSON whose BMSSL and meta-SSL rows are SimCLR's plus ``shift`` points, each
    with its own seed noise (``spread``): BMSSL − SimCLR = shift, BMSSL − meta-SSL = 0."""
    rng = np.random.default_rng(0)
    columns = ["glyphs 5w1s", "glyphs 5w5s", "digits 5w1s"]
    rows: dict = {label: {} for label in LABELS.values()}
    for column in columns:
        base = 60 + rng.normal(0, 3, seeds)
        rows["SimCLR"][column] = {"seed_means": base.tolist()}
        plain = base + shift + rng.normal(0, spread, seeds)
        rows["Meta-SSL (δ = 0)"][column] = {"seed_means": plain.tolist()}
        bmssl = base + shift + rng.normal(0, spread, seeds)
        rows["BMSSL (δ > 0)"][column] = {"seed_means": bmssl.tolist()}
    meta = {"profile": "test", "labels": LABELS, "curves": curves or {}}
    return {"columns": columns, "rows": rows, "meta": meta}


def by_claim(rows: list[dict]) -> dict[str, dict]:
    return {r["claim"]: r for r in rows}


def test_a_large_effect_is_supported_and_a_reversed_one_contradicted() -> None:
    up = by_claim(claims_of("table1", table_json(+8.0, seeds=5)))
    assert up["BMSSL > SimCLR on glyphs"]["verdict"] == "supported"
    assert up["BMSSL > SimCLR, every set pooled"]["verdict"] == "supported"
    down = by_claim(claims_of("table1", table_json(-8.0, seeds=5)))
    assert down["BMSSL > SimCLR on digits"]["verdict"] == "contradicted"
    # δ > 0 against δ = 0: no effect to find
    plain = down["BMSSL > meta-SSL (δ = 0) on glyphs"]
    assert plain["verdict"].startswith("inconclusive (underpowered: detects ≥ ")
    assert plain["mde_family"] > abs(plain["mean"]) and plain["family_size"] == 6


def test_one_seed_is_untestable_never_marked() -> None:
    rows = claims_of("table1", table_json(+8.0, seeds=1))
    assert rows and all(r["verdict"].startswith("inconclusive (untestable: one seed") for r in rows)
    table = Table("t", ["c"])
    cells = {"A": [np.array([70.0, 72.0])], "B": [np.array([50.0, 52.0])]}
    mark_table(table, {"c": cells}, "B")
    assert table.marks.get("A", {}).get("c", "") == ""
    assert table.footer[0].startswith("No ▲/▼ or bold: one seed")


def test_marks_read_the_holm_adjusted_p() -> None:
    rng = np.random.default_rng(1)
    by_column = {}
    for column in ("c1", "c2"):
        base = [rng.normal(60, 1, 200) for _ in range(5)]
        by_column[column] = {
            "ref": base,
            "up": [b + 10 + rng.normal(0, 0.5) for b in base],
            "same": [b + rng.normal(0, 0.5) for b in base],
        }
    table = Table("t", ["c1", "c2"])
    adjusted = mark_table(table, by_column, "ref")
    assert table.marks["up"] == {"c1": "better", "c2": "better"}
    assert table.marks.get("same", {}).get("c1", "") == ""
    result = adjusted["c1"]["up", "ref"]
    assert result["family_size"] == 6 and result["p_adjusted"] >= result["p_raw"]
    assert "Holm-adjusted p < 0.05 over the table's 6 comparison(s)" in table.markdown()
    assert any(line.startswith("Power (5 seeds, vs ref") for line in table.footer)


def test_views_to_reach_interpolates_between_validations() -> None:
    curve = [(100, 40.0), (200, 60.0), (300, 80.0)]
    assert views_to_reach(curve, 70.0) == pytest.approx(250.0)
    assert views_to_reach(curve, 30.0) == 100.0  # above it at the first validation: an upper bound
    assert views_to_reach(curve, 90.0) is None


def test_speed_claim_reads_log2_views_ratio() -> None:
    # BMSSL reaches 95% of the lower final accuracy at 2x fewer views than SimCLR on every seed,
    # with some seed-to-seed spread so that the test has a variance to work with.
    fast = [[(100 * k, 10.0 * k) for k in range(1, 11)] for _ in range(4)]
    slow = [[(200 * k + 10 * s, 10.0 * k) for k in range(1, 11)] for s in range(4)]
    result = speed({"BMSSL": fast, "SimCLR": slow}, "BMSSL", "SimCLR")
    assert result is not None and result["mean"] > 0.9 and result["p"] < 0.01
    curves = {"glyphs": {"BMSSL (δ > 0)": fast, "SimCLR": slow, "Meta-SSL (δ = 0)": slow}}
    rows = by_claim(claims_of("table1", table_json(0.0, seeds=4, curves=curves)))
    text = "BMSSL reaches 95% of the lower final val accuracy in fewer views than SimCLR on glyphs"
    assert rows[text]["unit"] == "log2 views" and rows[text]["verdict"] == "supported"


def test_bissl_claims_per_set_and_pooled(tmp_path: Path) -> None:
    from reproduce.bissl_report import LABELS as BL

    rows = {BL["baseline"]: {}, BL["bissl"]: {}}
    columns = ["digits top-1", "digits top-5", "glyphs top-1"]
    for c in columns:
        rows[BL["baseline"]][c] = {"per_seed": [80.0, 82.0, 79.0, 81.0, 80.5]}
        rows[BL["bissl"]][c] = {"per_seed": [80.5, 81.0, 79.5, 82.0, 80.0]}
    data = {"columns": columns, "rows": rows, "meta": {"profile": "t"}}
    found = write_claims(tmp_path, "bissl_table", data)
    names = [r["claim"] for r in found]
    assert names == [
        "BiSSL > fine-tune baseline on digits top-1",
        "BiSSL > fine-tune baseline on glyphs top-1",
        "BiSSL > fine-tune baseline, every set pooled",
    ]
    assert json.loads((tmp_path / "claims.json").read_text())["claims"][0]["p_adjusted"] is not None
    assert "| BiSSL > fine-tune baseline on digits top-1 |" in (tmp_path / "claims.md").read_text()


def test_claims_command_reads_tables_and_says_when_there_are_none(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--profile", "cpu", "--results", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no results table of the 'cpu' profile" in capsys.readouterr().err
    folder = tmp_path / "table1" / "cpu"
    folder.mkdir(parents=True)
    (folder / "table1.json").write_text(json.dumps(table_json(+8.0, seeds=5)))
    assert main(["--profile", "cpu", "--results", str(tmp_path)]) == 0
    assert "| BMSSL > SimCLR on glyphs |" in capsys.readouterr().out
    assert (folder / "claims.md").is_file()
