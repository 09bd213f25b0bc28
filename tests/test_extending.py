"""README "Extending the harness", run as it stands: the in-tree route (a method, a few-shot
dataset, a downstream set and a search space, each a file written and a diff applied to a copy
of the repository), the plugin route (a method, a dataset, a backbone and a search space from
modules outside the packages, through ``python -m bmssl``, ``reproduce/table1.py`` and a
``python -m tuning`` search), and BiSSL's own registration through its entry point."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("noise_contrast", "stripes", "tiny_mlp", "noise_level")
PACKAGES = ("bmssl", "bissl", "tuning", "reproduce")


def readme_section(subsection: str) -> str:
    """The text of ``### subsection`` of the README's "Extending the harness"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Extending the harness", 1)[1].split("\n## ", 1)[0]
    return section.split(f"### {subsection}\n", 1)[1].split("\n### ", 1)[0]


def python_blocks(text: str) -> dict[str, str]:
    """``{path: code}`` of the ``python`` blocks (their first line ``# <path>: ...``)."""
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return {re.match(r"# ([\w./]+\.py)", b).group(1): b for b in blocks}  # type: ignore[union-attr]


def diff_blocks(text: str) -> list[tuple[str, str, str]]:
    """``(path, old, new)`` of the ``diff`` blocks: ``# <path>`` first, then lines of `` ``
    (context), ``-`` (old only) and ``+`` (new only)."""
    out = []
    for block in re.findall(r"```diff\n(.*?)```", text, re.S):
        header, *lines = block.splitlines()
        old = [line[1:] for line in lines if line[:1] in " -"]
        new = [line[1:] for line in lines if line[:1] in " +"]
        out.append((header.removeprefix("# "), "\n".join(old) + "\n", "\n".join(new) + "\n"))
    return out


def apply_diff(tree: Path, path: str, old: str, new: str) -> None:
    target = tree / path
    text = target.read_text()
    assert text.count("\n" + old) == 1, f"README diff does not match {path} once:\n{old}"
    target.write_text(text.replace("\n" + old, "\n" + new))


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def clean_env(pythonpath: list[Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BMSSL_PLUGINS", "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    return env


def copy_packages(dest: Path, pyproject: bool = True) -> Path:
    """The packages (and ``pyproject.toml``: a source checkout) copied under ``dest``."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    if pyproject:
        shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


# -- the plugin route ---------------------------------------------------------------------------


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    examples = python_blocks(readme_section("As a plugin"))
    assert set(examples) == {f"{m}.py" for m in PLUGINS}
    for name, code in examples.items():
        (tmp_path / name).write_text(code)
    env = clean_env([tmp_path, ROOT])
    env["BMSSL_PLUGINS"] = ",".join(PLUGINS)
    return env


TRAIN = ["dataset=stripes", "backbone=mlp", "width=16", "proj_hidden=16", "proj_dim=8"]


def test_method_dataset_backbone_train_and_evaluate(tmp_path: Path, plugin_env) -> None:
    assert "noise-contrast" in run(["-m", "bmssl", "methods"], plugin_env, tmp_path).stdout
    out = tmp_path / "run"
    args = ["train", "noise-contrast", "--out", str(out), "--quiet", *TRAIN]
    run(["-m", "bmssl", *args, "steps=4", "eval_every=2", "eval_episodes=5"], plugin_env, tmp_path)
    assert (out / "checkpoints" / "best.pt").is_file()
    shown = run(["-m", "bmssl", "eval", "--out", str(out), "episodes=10"], plugin_env, tmp_path)
    assert "stripes test 5-way 1-shot" in shown.stdout


def test_method_is_a_table1_row(tmp_path: Path, plugin_env) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        "profile: ext\nepisodes: 10\nn_query: 5\nseeds: [0, 1]\nreference: random\njobs: 2\n"
        "methods: [random, noise-contrast]\n"
        "model: {backbone: mlp, width: 16, proj_hidden: 16, proj_dim: 8}\n"
        "datasets: {stripes: {cells: [5w1s]}}\n"
        "method_overrides: {noise-contrast: {steps: 4, eval_every: 2, eval_episodes: 5}}\n"
    )
    out = tmp_path / "table"
    script = str(ROOT / "reproduce" / "table1.py")
    shown = run(
        [script, "--config", str(profile), "--out", str(out), "--quiet"], plugin_env, tmp_path
    )
    assert "| Noise contrast |" in shown.stdout and "stripes 5w1s" in shown.stdout


@pytest.mark.ray
def test_method_is_searchable_in_a_plugin_space(tmp_path: Path, plugin_env) -> None:
    import tempfile

    listed = run(["-m", "tuning", "spaces"], plugin_env, tmp_path).stdout
    assert re.search(r"noise-level .*methods: noise-contrast", listed)
    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's tmp_path.
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    plugin_env["RAY_TMPDIR"] = ray_dir
    args = [
        "-m", "tuning", "search", "noise-contrast", "--space", "noise-level", "--out",
        str(tmp_path / "tune"), "--num-cpus", "2", "--seeds", "0", "--quiet", *TRAIN,
        "steps=4", "eval_every=2", "eval_episodes=5",
    ]  # fmt: skip
    try:
        shown = run(args, plugin_env, tmp_path)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert "trials finished" in shown.stdout


# -- the in-tree route --------------------------------------------------------------------------


def test_in_tree_method_dataset_downstream_set_and_space(tmp_path: Path) -> None:
    tree = copy_packages(tmp_path / "tree")
    text = readme_section("In the tree")
    plugins = python_blocks(readme_section("As a plugin"))
    # the README: the plugin's method module without its register_method call, and its dataset
    (tree / "bmssl" / "noise_contrast.py").write_text(
        plugins["noise_contrast.py"].split("\nregister_method(", 1)[0]
    )
    (tree / "bmssl" / "data" / "stripes.py").write_text(plugins["stripes.py"])
    for path, code in python_blocks(text).items():
        (tree / path).write_text(code)
    diffs = diff_blocks(text)
    assert {p for p, _, _ in diffs} == {
        "bmssl/methods.py", "bmssl/data/registry.py", "bmssl/data/downstream/__init__.py",
        "tuning/spaces.py",
    }  # fmt: skip
    for path, old, new in diffs:
        apply_diff(tree, path, old, new)
    env, cwd = clean_env([tree]), tmp_path
    assert "noise-contrast" in run(["-m", "bmssl", "methods"], env, cwd).stdout
    train = ["train", "noise-contrast", "--out", str(tmp_path / "nc"), "--quiet", "width=8"]
    run(["-m", "bmssl", *train, "dataset=stripes", "steps=2", "eval_every=2", "eval_episodes=5"],
        env, cwd)  # fmt: skip
    assert (tmp_path / "nc" / "checkpoints" / "last.pt").is_file()
    tiny = [
        "pretext.dataset=stripes", "pretext.width=4", "pretext.proj_hidden=8", "pretext.proj_dim=4",
        "pretext.steps=2", "pretext.batch_size=16", "bilevel.alternations=1",
        "bilevel.lower_steps=1", "warmup.steps=2", "finetune.steps=2", "finetune.batch_size=16",
    ]  # fmt: skip
    base = ["-m", "bissl", "baseline", "--quiet", "--out", str(tmp_path / "waves"), *tiny]
    shown = run([*base, "dataset=waves"], env, cwd)
    assert '"test_top1"' in shown.stdout
    spaces = run(["-m", "tuning", "spaces"], env, cwd).stdout
    assert re.search(r"lr-sweep .*methods: .*noise-contrast", spaces)


# -- BiSSL's entry point ------------------------------------------------------------------------


def fake_distribution(site: Path, entry_points: str) -> None:
    """Installed metadata of this repository's distribution with these ``bmssl.plugins``."""
    info = site / "bmssl_harness-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bmssl-harness\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[bmssl.plugins]\n{entry_points}\n")


LIST = ["-c", "from bmssl.methods import list_methods; print([m.name for m in list_methods()])"]


def test_bissl_registers_through_the_entry_point_pyproject_declares(tmp_path: Path) -> None:
    from bmssl import plugins

    assert not hasattr(plugins, "BUILTIN_PLUGINS")
    assert plugins.source_entry_points(ROOT) == {"bissl": "bissl.methods:register"}
    text = (ROOT / "pyproject.toml").read_text()  # Python 3.10 reads it without tomllib
    group = plugins._table(text, 'project.entry-points."bmssl.plugins"')
    assert (plugins._table(text, "project")["name"], group) == plugins._project(text)
    # An installed copy (no pyproject.toml beside the packages) reads its metadata; the fake
    # distribution first on the path hides whatever this environment has installed.
    site = copy_packages(tmp_path / "site", pyproject=False)
    fake_distribution(site / "without", "")
    shown = run(LIST, clean_env([site, site / "without"]), tmp_path).stdout
    assert "'simclr'" in shown and "'bissl'" not in shown  # the substrate names no plugin
    fake_distribution(site / "with", "bissl = bissl.methods:register")
    assert "'bissl'" in run(LIST, clean_env([site, site / "with"]), tmp_path).stdout
    # ...and a source checkout its pyproject.toml, whatever stale metadata says
    checkout = copy_packages(tmp_path / "checkout")
    stale = tmp_path / "stale"
    fake_distribution(stale, "gone = bissl_removed_long_ago:register")
    shown = run(LIST, clean_env([checkout, stale]), tmp_path).stdout
    assert "'bissl'" in shown and "'bissl-finetune'" in shown
