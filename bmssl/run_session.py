"""The bookkeeping of one ``fit`` session in a run folder (rank 0; :mod:`bmssl.trainer`).

- :func:`write_provenance`: ``provenance.json`` (:mod:`bmssl.provenance`) at the run's first
  start (a resume keeps it);
- :func:`start_tracker`: the experiment tracker ``config.tracker`` names (:mod:`bmssl.tracking`,
  :func:`tracking_of`), with the resolved config as its parameters;
- :func:`end_provenance`: the session (steps, wall time, status, the code it ran) appended to
  ``provenance.json`` at the end of ``fit``.

None of them touches a random number generator (:func:`bmssl.provenance.preserved_rng`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from bmssl.io import write_json
from bmssl.run_record import PROVENANCE_FILE


def _config_dict(config: Any) -> dict[str, Any] | None:
    """A dataclass config as a dict (None for anything else)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return None


def tracking_of(config: Any) -> tuple[str, str | None]:
    """``(tracker, tracking_uri)`` of a config: its own fields, else its ``pretext`` section's
    (BiSSL's run config), else no tracker."""
    for source in (config, getattr(config, "pretext", None)):
        kind = getattr(source, "tracker", None)
        if kind is not None:
            return str(kind), getattr(source, "tracking_uri", None)
    return "none", None


def start_tracker(config: Any, out_dir: Path, method: str) -> Any:
    """The tracker ``config.tracker`` names (:mod:`bmssl.tracking`), with the resolved
    config logged as its parameters; None for ``none``."""
    from bmssl import provenance, tracking

    kind, uri = tracking_of(config)
    if kind == "none":
        return None
    with provenance.preserved_rng():
        tracker = tracking.make_tracker(
            kind, out_dir, experiment=method,
            run_name=tracking.run_name_of(out_dir, method), uri=uri,
        )  # fmt: skip
        params = _config_dict(config)
        if params is not None:
            tracker.log_params(params)
        tracker.log_artifacts([out_dir / PROVENANCE_FILE])
    return tracker


def write_provenance(config: Any, out_dir: Path, method: str) -> str:
    """Write ``provenance.json`` at the run's first start (a resume keeps it); return the
    session's start time."""
    from bmssl import provenance

    started_at = provenance.now_utc()
    path = out_dir / PROVENANCE_FILE
    if path.is_file():
        return started_at
    with provenance.preserved_rng():
        refs = provenance.dataset_refs(config)
        configs = _config_dict(config)
        record = provenance.collect(
            datasets=provenance.fingerprint_datasets(refs), configs=configs,
            started_at=started_at, method=method, run_dir=str(out_dir), sessions=[],
        )  # fmt: skip
    write_json(path, record)
    return started_at


def end_provenance(
    out_dir: Path, started_at: str, first: int, last: int, wall: float, status: str
) -> None:
    """Append one ``fit`` session (steps ``first`` to ``last``, wall time, status, the code it
    ran) to ``provenance.json``; the record's ``wall_time_s`` sums the sessions."""
    import json

    from bmssl import provenance

    path = out_dir / PROVENANCE_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    code = provenance.code_state()
    record.setdefault("sessions", []).append({
        "started_at": started_at, "ended_at": provenance.now_utc(), "steps": [first, last],
        "wall_time_s": round(wall, 3), "status": status.lower(), "commit": code["commit"],
        "dirty": code["dirty"], "diff_sha256": code["diff_sha256"],
    })  # fmt: skip
    record["wall_time_s"] = round(sum(s["wall_time_s"] for s in record["sessions"]), 3)
    with contextlib.suppress(OSError):
        write_json(path, record)
