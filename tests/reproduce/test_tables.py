import csv
import io
import json
import re

import numpy as np
import pytest

from reproduce.stats import compare_rows, summarise_cell
from reproduce.tables import Table, format_mean_ci, latex_escape

ROWS = ["Random init", "SimCLR", "BMSSL (δ > 0)", "Meta-SSL, no bootstrap (δ = 0)"]
COLUMNS = ["glyphs 5w1s", "digits 5w5s"]


def filled_table() -> Table:
    table = Table("Table 1 (cpu profile): accuracy % ± 95% t-interval over 3 seeds", COLUMNS)
    for i, row in enumerate(ROWS):
        for j, col in enumerate(COLUMNS):
            table.set(row, col, format_mean_ci(60 + 5 * i + j, 0.5), raw={"mean": 60 + 5 * i + j})
        table.notes[row] = "this harness"
    table.extra_columns["budget"] = {row: "19.2k views, 41 s" for row in ROWS[1:]}
    return table


def test_format_mean_ci():
    assert format_mean_ci(90.371, 0.456) == "90.37 ± 0.46"
    assert format_mean_ci(90.371, None) == "90.37"
    assert format_mean_ci(90.371, float("nan")) == "90.37"


def test_markdown_marks_bold_and_legend():
    table = filled_table()
    table.reference = "SimCLR"
    table.mark("BMSSL (δ > 0)", "glyphs 5w1s", "better")
    table.mark("Random init", "glyphs 5w1s", "worse")
    table.mark("Meta-SSL, no bootstrap (δ = 0)", "glyphs 5w1s", "")
    table.bold("BMSSL (δ > 0)", "glyphs 5w1s")
    md = table.markdown()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert header == "| Method | glyphs 5w1s | digits 5w5s | budget | Source |"
    bmssl = next(line for line in lines if line.startswith("| BMSSL"))
    assert "| **70.00 ± 0.50** ▲ |" in bmssl
    assert "| 55.00 ± 0.50 ▼ |" not in md  # random init's cell is 60.00
    assert "| 60.00 ± 0.50 ▼ |" in md
    assert "| 75.00 ± 0.50 |" in md  # an empty mark shows nothing
    assert md.count("**") == 2 + 2 + 2  # title, the bold cell, the legend's "Bold"
    legend = lines[-1]
    assert "SimCLR" in legend and "paired t-test across seeds" in legend
    assert "▲/▼" in legend and "every other row" in legend
    # Every table row has as many cells as the header.
    assert {line.count("|") for line in lines if line.startswith("|")} == {header.count("|")}


def test_markdown_without_marks_has_no_legend_and_no_bold():
    md = filled_table().markdown()
    assert "▲" not in md and "excludes zero" not in md
    assert md.count("**") == 2  # the title only: bold needs a significance decision
    assert "**75.00" in filled_table().markdown(bold_best=True)  # the old, untested best mean


def test_mark_rejects_unknown():
    with pytest.raises(ValueError):
        filled_table().mark("SimCLR", "glyphs 5w1s", "significant")


def test_csv_shape_unchanged():
    table = filled_table()
    table.mark("BMSSL (δ > 0)", "glyphs 5w1s", "better")
    table.bold("BMSSL (δ > 0)", "glyphs 5w1s")
    rows = list(csv.reader(io.StringIO(table.csv())))
    assert rows[0] == ["method", *COLUMNS, "source", "budget"]
    assert [r[0] for r in rows[1:]] == ROWS
    assert rows[3][1] == "70.00 ± 0.50"  # no mark or bold in the CSV
    assert {len(r) for r in rows} == {len(rows[0])}
    plain = Table("t", COLUMNS)
    plain.set("A", COLUMNS[0], "1")
    assert plain.csv().splitlines()[0] == "method,glyphs 5w1s,digits 5w5s,source"


def braces_balanced(text: str) -> bool:
    depth = 0
    for char in re.sub(r"\\[{}]", "", text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def test_latex_booktabs():
    table = filled_table()
    table.reference = "SimCLR"
    table.mark("BMSSL (δ > 0)", "glyphs 5w1s", "better")
    table.mark("Random init", "digits 5w5s", "worse")
    table.bold("BMSSL (δ > 0)", "glyphs 5w1s")
    table.set("A_b & c → d", "glyphs 5w1s", "50% #1")
    tex = table.latex(label="table1")
    assert braces_balanced(tex)
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrrll}"):
        assert tex.count(command) == 1
    assert r"\label{tab:table1}" in tex
    body = tex[tex.index(r"\midrule") : tex.index(r"\bottomrule")].splitlines()[1:]
    assert len(body) == len(table.rows)  # one line per method
    assert all(line.endswith(r"\\") and line.count(" & ") == 4 for line in body)
    bmssl = next(line for line in body if line.startswith("BMSSL"))
    assert bmssl.startswith(
        r"BMSSL ($\delta$ $>$ 0) & \textbf{70.00 $\pm$ 0.50}$^\blacktriangle$ &"
    )
    assert r"65.00 $\pm$ 0.50$^\blacktriangledown$" not in tex
    assert r"61.00 $\pm$ 0.50$^\blacktriangledown$" in tex
    assert r"A\_b \& c $\rightarrow$ d & 50\% \#1 &" in tex
    caption = next(line for line in tex.splitlines() if line.startswith(r"\caption"))
    assert "SimCLR" in caption and r"95\%" in caption and "±" not in caption
    # Nothing unescaped: no bare special character or non-ASCII letter outside the header comment.
    content = "\n".join(tex.splitlines()[1:]).replace(" & ", " ")  # cell separators are fine
    assert re.search(r"(?<!\\)[%&_#]", content) is None
    assert all(ord(c) < 128 for c in content)


def test_latex_escape_specials():
    assert latex_escape("a_b%c&d$e#f{g}") == r"a\_b\%c\&d\$e\#f\{g\}"
    assert latex_escape("δ = 0 → Δ") == r"$\delta$ = 0 $\rightarrow$ $\Delta$"
    assert latex_escape("λ Λ Β") == r"$\lambda$ $\Lambda$ B"
    assert latex_escape(r"\x ~ ^") == r"\textbackslash{}x \textasciitilde{} \textasciicircum{}"


def test_annotate_from_comparisons():
    rng = np.random.default_rng(0)
    base = [rng.normal(60, 10, 60) for _ in range(2)]
    per_seed = {
        "Random init": [x - 10 + rng.normal(0, 1, 60) for x in base],
        "SimCLR": [x + rng.normal(0, 1, 60) for x in base],
        "BMSSL (δ > 0)": [x + 6 + rng.normal(0, 1, 60) for x in base],
    }
    table = Table("t", ["c"])
    for row, seeds in per_seed.items():
        cell = summarise_cell(seeds)
        table.set(row, "c", format_mean_ci(cell["mean"], cell["half_width"]), raw=cell)
    table.annotate("c", compare_rows(per_seed, n_boot=300), reference="SimCLR")
    assert table.marks == {"Random init": {"c": "worse"}, "BMSSL (δ > 0)": {"c": "better"}}
    assert table.bolded == {"BMSSL (δ > 0)": {"c"}}
    assert len(table.comparisons["c"]) == 6


def test_write_all_formats(tmp_path):
    table = filled_table()
    table.reference = "SimCLR"
    table.mark("BMSSL (δ > 0)", "glyphs 5w1s", "better")
    table.bold("BMSSL (δ > 0)", "glyphs 5w1s")
    paths = table.write(tmp_path, "table1", meta={"seeds": 3})
    assert sorted(p.name for p in paths) == [f"table1.{e}" for e in ("csv", "json", "md", "tex")]
    data = json.loads((tmp_path / "table1.json").read_text())
    assert data["reference"] == "SimCLR" and data["meta"] == {"seeds": 3}
    assert data["bold"] == {"BMSSL (δ > 0)": ["glyphs 5w1s"]}
    assert data["marks"]["BMSSL (δ > 0)"]["glyphs 5w1s"] == "better"
    assert data["extra_columns"]["budget"]["SimCLR"] == "19.2k views, 41 s"
    assert (tmp_path / "table1.tex").read_text() == table.latex(label="table1")


def test_prune_weights_deletes_the_weights_and_keeps_the_records(tmp_path):
    import os

    from reproduce.tables import prune_weights

    run = tmp_path / "seed0"
    (run / "bissl" / "checkpoints").mkdir(parents=True)
    (run / "bissl" / "checkpoints" / "last.pt").write_bytes(b"x" * 100)
    os.link(run / "bissl" / "checkpoints" / "last.pt", run / "bissl" / "checkpoints" / "best.pt")
    (run / "finetuned.pt").write_bytes(b"y" * 10)
    (run / "metrics.json").write_text("{}")
    (run / "bissl" / "metrics.csv").write_text("step\n")
    assert prune_weights(run) == 110  # the linked bytes counted once
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == [
        "bissl/metrics.csv",
        "metrics.json",
    ]
    assert prune_weights(run) == 0
