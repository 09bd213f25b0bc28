"""The run record a trainer keeps in its run folder (:mod:`bmssl.trainer`): the training logs
averaged per interval (:class:`RunRecord`, the rows of ``metrics.csv`` and of a tracker), the
names of the record files a tracker stores as artefacts, and :func:`write_record_files`, which
rewrites ``history.json`` and ``metrics.csv`` with each checkpoint."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from bmssl.io import write_json, write_text


class RunRecord:
    """Averaged training logs per interval, as rows for ``metrics.csv`` (and TensorBoard)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._count = 0

    def add(self, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._count += 1

    def close_interval(self, step: int, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Row of the means since the last row (plus ``extra``, e.g. validation metrics)."""
        row = {"step": float(step)}
        row.update({k: v / max(1, self._count) for k, v in self._sums.items()})
        row.update(extra or {})
        self.rows.append(row)
        self._sums, self._count = {}, 0
        return row

    @property
    def pending(self) -> bool:
        return self._count > 0

    def csv_text(self) -> str:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "sums": self._sums, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state.get("rows", [])]
        self._sums = dict(state.get("sums", {}))
        self._count = int(state.get("count", 0))


#: the run folder's provenance record (:mod:`bmssl.provenance`)
PROVENANCE_FILE = "provenance.json"
#: the small record files a tracker stores as artefacts
RECORD_FILES = ("metrics.csv", "history.json", PROVENANCE_FILE)


def write_record_files(
    out_dir: Path, history: list[dict[str, float]], record: RunRecord, tracker: Any
) -> None:
    """Rewrite ``history.json`` and ``metrics.csv`` in ``out_dir`` (rank 0, with each checkpoint)
    and hand the record files to ``tracker`` (when there is one) as artefacts."""
    write_json(out_dir / "history.json", history)
    # Written with each checkpoint, not each row: rewriting the whole file every log_every
    # steps costs O(rows²) over a long run, and the rows after the last checkpoint are
    # replayed by a resume anyway.
    write_text(out_dir / "metrics.csv", record.csv_text())
    if tracker is not None:
        tracker.log_artifacts([out_dir / name for name in RECORD_FILES])
