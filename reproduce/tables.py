"""Results tables: cached cells, Markdown/CSV/JSON output, written atomically.

A table is rows (methods) × columns (benchmark cells). Each finished cell is stored as its own
JSON file so that a rerun skips it; the assembled table is written as ``<name>.md``, ``.csv`` and
``.json`` next to the cells.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmssl.io import write_json, write_text


def slug(text: str) -> str:
    """File-name-safe form of a row or column name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able settings: a cached result is valid only under the same one."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def settings_fingerprint(config: Any) -> str:
    """Fingerprint of a method config (a dataclass); ``device`` is left out because the same
    run on another device is the same result."""
    return fingerprint({k: v for k, v in dataclasses.asdict(config).items() if k != "device"})


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


@dataclass
class Table:
    """Rows × columns of formatted cells, with optional per-row source notes."""

    title: str
    columns: list[str]
    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)

    def set(self, row: str, column: str, text: str, raw: Any = None) -> None:
        self.rows.setdefault(row, {})[column] = text
        if raw is not None:
            self.raw.setdefault(row, {})[column] = raw

    def markdown(self, bold_best: bool = True) -> str:
        """GitHub Markdown; the best measured mean of each column is bold."""
        header = ["Method", *self.columns] + (["Source"] if self.notes else [])
        best = self._best_rows() if bold_best else {}
        lines = [f"**{self.title}**", "", "| " + " | ".join(header) + " |"]
        lines.append(
            "|"
            + "|".join(["---"] + ["---:"] * len(self.columns) + (["---"] if self.notes else []))
            + "|"
        )
        for row, cells in self.rows.items():
            texts = []
            for col in self.columns:
                text = cells.get(col, "–")
                texts.append(f"**{text}**" if best.get(col) == row else text)
            extra = [self.notes.get(row, "")] if self.notes else []
            lines.append("| " + " | ".join([row, *texts, *extra]) + " |")
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
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["method", *self.columns, "source"])
        for row, cells in self.rows.items():
            writer.writerow(
                [row, *(cells.get(c, "") for c in self.columns), self.notes.get(row, "")]
            )
        return buffer.getvalue()

    def write(
        self, out_dir: str | Path, name: str, meta: dict[str, Any] | None = None
    ) -> list[Path]:
        """Write ``name.md``, ``name.csv`` and ``name.json`` atomically; return their paths."""
        out = Path(out_dir)
        payload = {
            "title": self.title,
            "columns": self.columns,
            "rows": self.raw,
            "text": self.rows,
            "sources": self.notes,
        }
        if meta:
            payload["meta"] = meta
        return [
            write_text(out / f"{name}.md", self.markdown()),
            write_text(out / f"{name}.csv", self.csv()),
            write_json(out / f"{name}.json", payload),
        ]


def format_mean_ci(mean: float, ci: float) -> str:
    return f"{mean:.2f} ± {ci:.2f}"


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
