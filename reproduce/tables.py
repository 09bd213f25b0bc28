"""Results tables: cached cells, Markdown/CSV/JSON output, written atomically.

A table is rows (methods) × columns (benchmark cells). Each finished cell is stored as its own
JSON file so that a rerun skips it; the assembled table is written as ``<name>.md``, ``.csv``,
``.json`` and ``.tex`` (booktabs) next to the cells.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmssl.io import write_json, write_text
from reproduce.latex import LATEX_MARKS, latex_escape


def slug(text: str) -> str:
    """File-name-safe form of a row or column name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able settings: a cached result is valid only under the same one."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: config fields that choose where a run executes, not what it computes (only the device: the
#: fingerprints of earlier caches included every other field)
EXECUTION_ONLY = frozenset({"device"})
#: fields added after results were cached, with the value that computes what runs before them
#: computed: left out of the fingerprint at that value, so older cached models stay valid
LATER_FIELDS: dict[str, Any] = {"task_chunk": 0, "tracker": "none", "tracking_uri": None}


def _without_later(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without :data:`LATER_FIELDS` at their original value, in sections too (the
    pretext section of a BiSSL config is a run config)."""
    return {
        k: _without_later(v) if isinstance(v, dict) else v
        for k, v in values.items()
        if not (k in LATER_FIELDS and v == LATER_FIELDS[k])
    }


def settings_fingerprint(config: Any) -> str:
    """Fingerprint of a method config (a dataclass) without its :data:`EXECUTION_ONLY` fields
    (the same run on another device is the same result) and :data:`LATER_FIELDS` at their
    original value."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in EXECUTION_ONLY}
    return fingerprint(_without_later(values))


def prepare_run_dir(run_dir: Path, settings: str, fresh: bool) -> None:
    """Make ``run_dir`` hold a run of ``settings``: a run of other settings (or any, when
    ``fresh``) is deleted so that it is retrained, never resumed under the wrong config."""
    stamp = run_dir / "settings.txt"
    stale = run_dir.exists() and (
        fresh or not stamp.is_file() or stamp.read_text().strip() != settings
    )
    if stale:
        shutil.rmtree(run_dir)
    if not stamp.is_file():
        write_text(stamp, settings + "\n")


def prune_weights(run_dir: Path, keep: tuple[str, ...] = ("backbone.pt",)) -> int:
    """Delete the ``*.pt`` files (weights, resume state) under a finished cell's ``run_dir`` and
    return the bytes freed; its records (metrics, history, curves, settings) and the files named
    in ``keep`` stay (the exported backbone, which other tables reuse, is small)."""
    freed = 0
    for path in sorted(run_dir.rglob("*.pt")):
        if path.name in keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            info = path.stat()
            path.unlink()
            # best.pt is often a hard link to last.pt: count the bytes once, at the last name.
            freed += info.st_size if info.st_nlink == 1 else 0
    return freed


class CellCache:
    """One JSON file per finished (row, column) cell under ``<out_dir>/cells``.

    A cell may carry the ``fingerprint`` of the settings that produced it; :meth:`get` with a
    fingerprint treats a cell made under other settings as missing, so an edited profile is rerun.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir) / "cells"

    def path(self, row: str, column: str) -> Path:
        return self.dir / f"{slug(row)}__{slug(column)}.json"

    def get(self, row: str, column: str, fingerprint: str | None = None) -> dict[str, Any] | None:
        path = self.path(row, column)
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # a corrupt cell is recomputed rather than trusted
        if fingerprint is not None and value.get("fingerprint") != fingerprint:
            return None
        return value

    def put(
        self, row: str, column: str, value: dict[str, Any], fingerprint: str | None = None
    ) -> None:
        if fingerprint is not None:
            value = {**value, "fingerprint": fingerprint}
        write_json(self.path(row, column), value)


# Marks of a cell against the reference row, as Markdown shows them and as LaTeX typesets them.
MARKS = {"better": "▲", "worse": "▼", "": ""}
SIGNIFICANCE_TEST = "two-sided paired t-test across seeds, p < 0.05"


@dataclass
class Table:
    """Rows × columns of formatted cells, with per-row source notes, extra text columns, and
    per-cell significance marks and bold.

    ``rows[row][column]`` is the cell's text, ``raw[row][column]`` its JSON-able numbers,
    ``notes[row]`` its source (the last column), ``extra_columns[header][row]`` the text of an
    extra column (e.g. the training budget) shown after the numeric columns. ``marks`` and
    ``bolded`` are set through :meth:`mark`, :meth:`bold` or :meth:`annotate`; ``reference`` is
    the row the marks compare against, named in the legend.
    """

    title: str
    columns: list[str]
    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_columns: dict[str, dict[str, str]] = field(default_factory=dict)
    marks: dict[str, dict[str, str]] = field(default_factory=dict)
    bolded: dict[str, set[str]] = field(default_factory=dict)
    reference: str | None = None
    comparisons: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: what a mark means, as the legend says it
    test: str = SIGNIFICANCE_TEST
    #: lines printed under the table (why there are no marks, the power of the tests, ...)
    footer: list[str] = field(default_factory=list)

    def set(self, row: str, column: str, text: str, raw: Any = None) -> None:
        self.rows.setdefault(row, {})[column] = text
        if raw is not None:
            self.raw.setdefault(row, {})[column] = raw

    def mark(self, row: str, column: str, mark: str) -> None:
        """Mark a cell ``"better"`` / ``"worse"`` than the reference row, or ``""`` (neither)."""
        if mark not in MARKS:
            raise ValueError(f"mark must be one of {sorted(MARKS)}, got {mark!r}")
        self.marks.setdefault(row, {})[column] = mark

    def bold(self, row: str, column: str) -> None:
        """Bold a cell: the caller has found ``row`` significantly better than every other row."""
        self.bolded.setdefault(row, set()).add(column)

    def annotate(
        self,
        column: str,
        comparisons: Mapping[tuple[str, str], dict[str, Any]],
        reference: str | None,
    ) -> None:
        """Marks, bold and JSON record of one column from :func:`reproduce.stats.compare_rows`.

        Each row other than ``reference`` is marked by the sign of its paired interval against
        ``reference``; a row is bolded if its interval against every other compared row lies
        above zero. The comparisons are kept for :meth:`write`'s JSON.
        """
        from reproduce.stats import beats_all, comparisons_json

        if reference is not None:
            self.reference = reference
            for (row, other), result in comparisons.items():
                if other == reference:
                    self.mark(row, column, {1: "better", -1: "worse"}.get(result["sign"], ""))
        for row in {pair[0] for pair in comparisons}:
            if beats_all(comparisons, row):
                self.bold(row, column)
        self.comparisons[column] = comparisons_json(comparisons)

    def _has_marks(self) -> bool:
        return any(m for cells in self.marks.values() for m in cells.values())

    def _legend(self, marks: tuple[str, str], bold: str, escape: Callable[[str], str] = str) -> str:
        """The line that says what the marks and bold mean, with ``marks`` and ``bold`` in the
        output's own notation and prose passed through ``escape``; empty when there are none."""
        parts = []
        if self._has_marks() or self.reference is not None:
            against = self.reference if self.reference is not None else "the reference row"
            prose = f": better/worse than {against} ({self.test})"
            parts.append(f"{marks[0]}/{marks[1]}{escape(prose)}")
        if any(self.bolded.values()):
            parts.append(f"{bold}{escape(': better than every other row by the same test')}")
        return "; ".join(parts) + "." if parts else ""

    def _header(self) -> list[str]:
        return ["Method", *self.columns, *self.extra_columns] + (["Source"] if self.notes else [])

    def _cells(
        self, row: str, bold_best: dict[str, str] | None = None
    ) -> list[tuple[str, bool, str]]:
        """``(text, bold, mark)`` of each numeric column of ``row``, in column order."""
        cells = self.rows.get(row, {})
        return [
            (
                cells.get(col, "–"),
                col in self.bolded.get(row, ()) or (bold_best or {}).get(col) == row,
                self.marks.get(row, {}).get(col, ""),
            )
            for col in self.columns
        ]

    def _texts(self, row: str) -> list[str]:
        """The extra columns' and the source's text of ``row``."""
        extra = [values.get(row, "") for values in self.extra_columns.values()]
        return extra + ([self.notes.get(row, "")] if self.notes else [])

    def markdown(self, bold_best: bool = False) -> str:
        """GitHub Markdown with a legend line under it.

        Bold cells are those set by :meth:`bold` (significance decided by the caller); with
        ``bold_best`` the highest mean of each column is bolded as well, without any test.
        A mark shows as ▲ (better) or ▼ (worse) after the number.
        """
        best = self._best_rows() if bold_best else None
        header = self._header()
        n_text = len(header) - 1 - len(self.columns)
        lines = [f"**{self.title}**", "", "| " + " | ".join(header) + " |"]
        lines.append(
            "|" + "|".join(["---"] + ["---:"] * len(self.columns) + ["---"] * n_text) + "|"
        )
        for row in self.rows:
            texts = [
                (f"**{text}**" if bold else text) + (f" {MARKS[mark]}" if mark else "")
                for text, bold, mark in self._cells(row, best)
            ]
            lines.append("| " + " | ".join([row, *texts, *self._texts(row)]) + " |")
        legend = self._legend((MARKS["better"], MARKS["worse"]), "**Bold**")
        below = ([legend] if legend else []) + self.footer
        return "\n".join(lines + (["", "\n\n".join(below)] if below else [])) + "\n"

    def latex(self, label: str | None = None) -> str:
        """A booktabs ``table`` environment (needs ``\\usepackage{booktabs,amssymb}``).

        Cells keep their text with ``±`` as ``$\\pm$``, bold as ``\\textbf``, marks as
        ``$^\\blacktriangle$`` / ``$^\\blacktriangledown$``; the title and legend form the
        caption. Every special character of LaTeX is escaped (see :func:`latex_escape`).
        """
        header = self._header()
        n_text = len(header) - 1 - len(self.columns)
        spec = "l" + "r" * len(self.columns) + "l" * n_text
        legend = self._legend(
            (LATEX_MARKS["better"], LATEX_MARKS["worse"]), r"\textbf{Bold}", latex_escape
        )
        caption = latex_escape(self.title.rstrip(".")) + (f". {legend}" if legend else "")
        caption += "".join(f" {latex_escape(line)}" for line in self.footer)
        lines = [
            r"% booktabs table written by reproduce/tables.py; needs \usepackage{booktabs,amssymb}",
            r"\begin{table}[t]",
            r"\centering",
            r"\small",
            rf"\caption{{{caption}}}",
        ]
        if label:
            lines.append(rf"\label{{tab:{slug(label)}}}")
        lines += [
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(latex_escape(h) for h in header) + r" \\",
            r"\midrule",
        ]
        for row in self.rows:
            cells = [
                (rf"\textbf{{{latex_escape(text)}}}" if bold else latex_escape(text))
                + LATEX_MARKS[mark]
                for text, bold, mark in self._cells(row)
            ]
            texts = [latex_escape(t) for t in self._texts(row)]
            lines.append(" & ".join([latex_escape(row), *cells, *texts]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def _best_rows(self) -> dict[str, str]:
        best: dict[str, str] = {}
        for col in self.columns:
            scored = [
                (raw[col]["mean"], row)
                for row, raw in self.raw.items()
                if col in raw and isinstance(raw[col], dict) and "mean" in raw[col]
            ]
            if scored:
                best[col] = max(scored)[1]
        return best

    def csv(self) -> str:
        """Plain cell texts (no marks or bold): ``method, <columns>, source, <extra columns>``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        # Extra columns go last so that the columns readers already index stay where they were.
        writer.writerow(["method", *self.columns, "source", *self.extra_columns])
        for row, cells in self.rows.items():
            writer.writerow(
                [
                    row,
                    *(cells.get(c, "") for c in self.columns),
                    self.notes.get(row, ""),
                    *(values.get(row, "") for values in self.extra_columns.values()),
                ]
            )
        return buffer.getvalue()

    def write(
        self, out_dir: str | Path, name: str, meta: dict[str, Any] | None = None
    ) -> list[Path]:
        """Write ``name.md``, ``.csv``, ``.json`` and ``.tex`` atomically; return their paths."""
        out = Path(out_dir)
        payload: dict[str, Any] = {
            "title": self.title,
            "columns": self.columns,
            "rows": self.raw,
            "text": self.rows,
            "sources": self.notes,
            "extra_columns": self.extra_columns,
            "reference": self.reference,
            "marks": self.marks,
            "bold": {row: sorted(cols) for row, cols in self.bolded.items() if cols},
            "comparisons": self.comparisons,
            "test": self.test,
            "footer": self.footer,
        }
        if meta:
            payload["meta"] = meta
        return [
            write_text(out / f"{name}.md", self.markdown()),
            write_text(out / f"{name}.csv", self.csv()),
            write_json(out / f"{name}.json", payload),
            write_text(out / f"{name}.tex", self.latex(label=name)),
        ]


def format_mean_ci(mean: float, ci: float | None, digits: int = 2) -> str:
    """``"mean ± ci"``; just the mean when the interval is undefined (``None`` or NaN, e.g. a
    t-interval over one seed). A mean that rounds to zero is never shown as ``-0.00``."""
    text = f"{mean:.{digits}f}"
    if float(text) == 0.0:
        text = f"{0.0:.{digits}f}"
    if ci is None or not math.isfinite(ci):
        return text
    return f"{text} ± {ci:.{digits}f}"


def format_difference(mean: float, ci: float | None, digits: int = 2) -> str:
    """A paired difference: :func:`format_mean_ci` with an explicit sign (``+1.20 ± 0.40``)."""
    text = format_mean_ci(mean, ci, digits)
    return text if text.startswith("-") else f"+{text}"


def parse_key_values(items: Sequence[str], what: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> dict; raises a UserError naming ``what`` on a malformed item."""
    from bmssl.errors import UserError

    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"{what} {item!r} is not of the form name=value")
        key, value = item.split("=", 1)
        out[key] = value
    return out
