"""tuning.plan and the command line: a request resolved once, bad input refused with exit 2."""

from __future__ import annotations

import json

import pytest

from bmssl.errors import UserError
from tests.tuning.helpers import TINY_BISSL, TINY_BMSSL
from tuning.__main__ import main
from tuning.plan import SearchPlan, SearchRequest, make_plan
from tuning.storage import check_storage, location_of, resolve_storage
from tuning.trainables import _prefixed, tune_metrics

SEARCH = ["search", "bmssl", "--space", "bmssl-delta"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "bmssl", "--space", "nope"], "unknown search space 'nope'"),
        (["search", "nope", "--space", "bmssl-delta"], "unknown method 'nope'"),
        (["search", "--space", "bmssl-delta"], "needs a METHOD"),
        (["search", "bissl", "--space", "bmssl-delta"], "does not apply to method 'bissl'"),
        (["search", "meta-ssl", "--space", "bmssl-delta"], "fixes bootstrap_steps=0"),
        ([*SEARCH, "--num-samples", "0"], "--num-samples"),
        ([*SEARCH, "--gpus-per-trial", "-1"], "gpus"),
        ([*SEARCH, "--gpus-per-trial", "2"], "a trial trains on one GPU"),
        ([*SEARCH, "--gpus-per-trial", "1.5"], "a trial trains on one GPU"),
        ([*SEARCH, "--cpus-per-trial", "0"], "cpus"),
        ([*SEARCH, "--out", "ftp://host/x"], "URI with scheme 'ftp'"),
        ([*SEARCH, "--storage", "file://relative/x"], "absolute path"),
        ([*SEARCH, "nope=1"], "unknown BMSSLConfig"),
        ([*SEARCH, "steps"], "steps: options are key=value"),
        ([*SEARCH, "--seeds", "a,b"], "comma-separated"),
        ([*SEARCH, "--config", "/no/such.yaml"], "exist"),
        ([*SEARCH, "--config", "huge"], "config file 'huge' does not exist"),
        (["search", "bissl", "--space", "bissl-lambda-gamma", "bilevel.nope=1"], "bilevel.nope"),
        (
            ["search", "bissl", "--space", "bissl-lambda-gamma", "--scheduler", "asha"],
            "known only at its end",
        ),
        (["report", "/no/such/search"], "tuning_spec.json"),
        (["report"], "one directory"),
    ],
)
def test_cli_bad_input_exits_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written into the repository
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_cli_lists_spaces_with_their_methods(capsys):
    from tuning.spaces import SPACES

    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SPACES)
    assert "methods: bissl-finetune" in out and "varies bilevel.lam, bilevel.gamma" in out


def test_search_help_lists_the_method_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "bissl", "--space", "bissl-lambda-gamma", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "bilevel.lam" in out and "finetune.lr" in out and "--out" in out and "tiny" in out


def test_plan_defaults():
    plan = make_plan(SearchRequest("bmssl", "bmssl-delta", overrides=dict(TINY_BMSSL)))
    # an ablation: every arm runs to the end with seeds 0 and 1
    assert (plan.search, plan.scheduler, plan.num_samples, plan.seeds) == (
        "grid",
        "fifo",
        1,
        [0, 1],
    )
    assert (plan.max_t, plan.grace_period) == (2, 1)
    plan = make_plan(SearchRequest("bmssl", "bmssl-delta", scheduler="asha", seeds=[3]))
    assert (plan.scheduler, plan.seeds) == ("asha", [3])
    plan = make_plan(SearchRequest("bissl", "bissl-lambda-gamma", num_samples=3))
    # the metric is the fine-tuned accuracy, known at the end only: FIFO
    assert (plan.search, plan.scheduler, plan.num_samples, plan.seeds) == (
        "random",
        "fifo",
        3,
        None,
    )
    assert plan.max_t == plan.base.bilevel.alternations
    assert "fine-tuned" in plan.metric_description
    plan = make_plan(SearchRequest("bissl-finetune", "finetune-lr-wd", config="tiny"))
    assert plan.scheduler == "fifo" and plan.base.finetune.steps == 60


def test_trial_config_layers_preset_overrides_and_params(tmp_path):
    # defaults < preset < key=value < the trial's params
    plan = make_plan(
        SearchRequest("simclr", "augment-strength", config="tiny", overrides=["steps=7"])
    )
    assert (plan.base.width, plan.base.steps, plan.base.eval_episodes) == (8, 7, 100)
    trial = plan.trial_config({"augment": "weak", "seed": 5})
    assert (trial.augment, trial.seed, trial.width, trial.steps) == ("weak", 5, 8, 7)
    with pytest.raises(UserError, match="not allowed|choose one of"):
        plan.trial_config({"augment": "extreme"})
    # a YAML file instead of a preset, and dotted params into BiSSL's sections
    path = tmp_path / "base.yaml"
    path.write_text("bilevel:\n  alternations: 3\nfinetune:\n  lr: 0.05\n")
    plan = make_plan(SearchRequest("bissl", "bissl-lambda-gamma", config=str(path)))
    trial = plan.trial_config({"bilevel.lam": 0.02, "bilevel.gamma": 1.0, "seed": 1})
    assert (trial.bilevel.lam, trial.bilevel.gamma, trial.bilevel.alternations) == (0.02, 1.0, 3)
    assert trial.finetune.lr == 0.05 and plan.base.bilevel.lam != 0.02


def test_plan_round_trips_through_json_and_names_what_a_resume_changes():
    plan = make_plan(SearchRequest("bissl", "bissl-lambda-gamma", overrides=dict(TINY_BISSL)))
    text = json.dumps(plan.to_json())
    back = SearchPlan.from_json(json.loads(text))
    assert back.method is plan.method and back.space is plan.space
    assert back.base == plan.base and [a.name for a in back.axes] == [a.name for a in plan.axes]
    assert back.differences(plan) == []
    changed = make_plan(
        SearchRequest(
            "bissl",
            "bissl-lambda-gamma",
            overrides={**TINY_BISSL, "bilevel.alternations": 3},
            num_samples=2,
        )
    )
    assert back.differences(changed) == [
        "bilevel.alternations: 2 -> 3",
        "num_samples: 8 -> 2",
        "max_t: 2 -> 3",
    ]


def test_a_runner_method_is_scheduled_fifo_and_described_by_its_method():
    """A trial of a method trained by a runner reports its metric once, at its end."""
    plan = make_plan(SearchRequest("bissl-finetune", "finetune-lr-wd", overrides=dict(TINY_BISSL)))
    assert plan.method.kind == "runner" and plan.scheduler == "fifo"
    assert "at the end of each trial" in plan.metric_description
    with pytest.raises(UserError, match="asha cannot be used"):
        make_plan(SearchRequest("bissl-finetune", "finetune-lr-wd", scheduler="asha"))


def test_tune_metrics_keeps_finite_numbers_and_needs_val_acc():
    out = tune_metrics({"val_acc": 50.0, "loss": float("nan"), "note": "x", "step": 3.0}, 3)
    assert out == {"val_acc": 50.0, "step": 3}
    with pytest.raises(KeyError, match="val_acc"):
        tune_metrics({"loss": 1.0}, 1)
    # a trainer followed by a final stage reports its own validations under a prefix
    shown = _prefixed({"val_acc": 40.0, "val_top1": 40.0, "loss": 1.0}, "bissl_")
    assert shown == {"bissl_val_acc": 40.0, "bissl_val_top1": 40.0, "loss": 1.0}
    assert tune_metrics(shown, 2, need_val_acc=False) == {**shown, "step": 2}


def test_storage_accepts_directories_and_uris(tmp_path):
    check_storage("s3://bucket/tune")  # checked without any network access
    local = resolve_storage(str(tmp_path / "a"))
    assert local.local == tmp_path / "a" and local.uri == str(tmp_path / "a")
    uri = resolve_storage(f"file://{tmp_path}/b")
    assert uri.local == tmp_path / "b" and uri.uri == f"file://{tmp_path}/b"
    child = uri.child("search")
    child.write_text("x.json", "{}")
    assert child.is_file("x.json") and child.read_text("x.json") == "{}"
    assert location_of(f"file://{tmp_path}/b/search").is_file("x.json")
    with child.staged() as directory:
        (directory / "r.txt").write_text("hi")
    assert (tmp_path / "b" / "search" / "r.txt").read_text() == "hi"
