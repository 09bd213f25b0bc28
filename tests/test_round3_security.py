"""Issue 23, item 1: resuming a search never runs code it did not write, and nothing else that
unpickles a file through a library does either.

The hostile folders here hold pickles that would create a marker file when unpickled (as the
review's crafted ``tuner.pkl`` did); every test checks the marker never appears. No Ray is
started: the refusals come before Tune is asked to restore anything.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from tests.fuzz.cli import run

TUNE = ["--config", "tiny", "--num-samples", "1", "--num-cpus", "1", "--quiet"]


class _Marker:
    """Unpickling this writes ``path`` (through builtins.exec: no module of ours is needed)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


def _hostile_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Marker(marker), protocol=4)


@pytest.fixture
def trust_dir(tmp_path, monkeypatch) -> Path:
    """A private record folder for this test (never the user's own)."""
    folder = tmp_path / "trust"
    monkeypatch.setenv("BMSSL_TRUST_DIR", str(folder))
    return folder


def _tuning(argv: list[str]):
    from tuning.__main__ import main

    return run(main, argv)


def _search_folder(store: Path, marker: Path) -> Path:
    """``store/bmssl-bmssl-delta`` as someone else could leave it: the spec this command would
    write, and a ``tuner.pkl`` and experiment state that run code when unpickled."""
    from tuning.plan import SearchRequest, make_plan

    plan = make_plan(
        SearchRequest(method="bmssl", space="bmssl-delta", config="tiny", num_samples=1)
    )
    search = store / plan.name
    search.mkdir(parents=True)
    (search / "tuning_spec.json").write_text(json.dumps(plan.to_json(), indent=2) + "\n")
    (search / "tuner.pkl").write_bytes(_hostile_pickle(marker))
    trial = {
        "trial_id": "a_00000",
        "status": "TERMINATED",
        "config": {"bootstrap_steps": 1, "inner_steps": 1, "seed": 0},
        "relative_logdir": "trial_a_00000",
        "storage": {"_type": "CLOUDPICKLE_FALLBACK", "value": _hostile_pickle(marker).hex()},
        "placement_group_factory": _hostile_pickle(marker).hex(),
    }
    meta = {"last_result": {"val_acc": 55.0, "step": 2}, "error_filename": None}
    state = {"trial_data": [[json.dumps(trial), json.dumps(meta)]], "runner_data": {}}
    (search / "experiment_state-2030-01-01_00-00-00.json").write_text(json.dumps(state))
    return search


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _resume(store: Path) -> list[str]:
    return ["search", "bmssl", "--space", "bmssl-delta", *TUNE, "--out", str(store), "--resume"]


def test_resume_refuses_a_search_this_user_did_not_write(tmp_path, trust_dir):
    marker = tmp_path / "marker"
    search = _search_folder(tmp_path / "shared", marker)
    before = _snapshot(search)
    ran = _tuning(_resume(tmp_path / "shared"))
    assert ran.code == 2 and len(ran.error_lines()) == 1, ran.err
    line = ran.error_lines()[0]
    assert "refusing to resume" in line and "no record" in line and "pickles" in line
    assert not marker.exists(), "the search folder's pickle ran"
    assert _snapshot(search) == before


def test_resume_refuses_a_state_file_altered_or_added_after_it_was_written(tmp_path, trust_dir):
    from tuning.storage import location_of
    from tuning.trust import digests_of_folder, sign

    marker = tmp_path / "marker"
    search = _search_folder(tmp_path / "shared", marker)
    experiment = location_of(search)
    (search / "tuner.pkl").write_bytes(pickle.dumps({"harmless": True}))
    sign(experiment, digests_of_folder(search))  # as if this harness had written them all
    (search / "tuner.pkl").write_bytes(_hostile_pickle(marker))  # then someone replaced it
    ran = _tuning(_resume(tmp_path / "shared"))
    assert ran.code == 2 and "tuner.pkl changed since this harness wrote" in ran.err
    (search / "tuner.pkl").write_bytes(pickle.dumps({"harmless": True}))
    (search / "experiment_state-2031-01-01_00-00-00.json").write_text("{}")  # a newer one
    ran = _tuning(_resume(tmp_path / "shared"))
    assert ran.code == 2 and "experiment_state-2031-01-01_00-00-00.json was added" in ran.err
    assert not marker.exists()


def test_a_record_folder_others_may_write_is_not_trusted(tmp_path, trust_dir):
    from tuning.storage import location_of
    from tuning.trust import digests_of_folder, sign

    search = _search_folder(tmp_path / "shared", tmp_path / "marker")
    sign(location_of(search), digests_of_folder(search))
    os.chmod(trust_dir / "trusted-searches", 0o777)
    ran = _tuning(_resume(tmp_path / "shared"))
    assert ran.code == 2 and "others may write it" in ran.err and "chmod 700" in ran.err
    assert not (tmp_path / "marker").exists()


def test_resume_of_a_search_that_does_not_exist_exits_2_and_creates_nothing(tmp_path, trust_dir):
    store = tmp_path / "nowhere"
    ran = _tuning(_resume(store))
    assert ran.code == 2 and "no search 'bmssl-bmssl-delta' to resume" in ran.err
    assert "without --resume" in ran.err and not store.exists()


def test_report_of_a_foreign_search_runs_none_of_its_code(tmp_path, trust_dir):
    marker = tmp_path / "marker"
    search = _search_folder(tmp_path / "shared", marker)
    ran = _tuning(["report", str(search)])
    assert ran.code == 0, ran.err
    assert not marker.exists(), "reading the Tune state unpickled it"
    summary = (search / "report" / "summary.md").read_text()
    assert "`a_00000`" in summary and "55.00" in summary


def test_upgrading_an_old_checkpoint_never_runs_its_code(tmp_path):
    import torch

    from bmssl.checkpoints import upgrade_checkpoint
    from bmssl.errors import UnsafeCheckpointError

    marker, path = tmp_path / "marker", tmp_path / "old.pt"
    torch.save({"method": "bmssl", "step": 1, "x": _Marker(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        upgrade_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()
