import os
import tempfile

import pytest
import torch

# Tests share 2 cores; one intra-op thread keeps them from oversubscribing the box.
torch.set_num_threads(1)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Searches record the digests of their Tune state in a user-private folder: the tests' records go
# to a folder of their own, never into the user's ~/.local/state.
os.environ.setdefault("BMSSL_TRUST_DIR", tempfile.mkdtemp(prefix="bmssl-trust-"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fake_downstream(tmp_path):
    """``make(name)``: a fake root of downstream set ``name`` under ``tmp_path`` (tests.fakes)."""
    from tests.fakes import FAKES

    def make(name: str):
        return FAKES[name](tmp_path / name)

    return make


@pytest.fixture
def class_tree(tmp_path):
    """A flat ImageFolder tree ``<class>/<image>.png``: 4 classes x 3 images of 10x10 pixels."""
    from tests.fakes import class_names, write_class_tree

    root = tmp_path / "tree"
    write_class_tree(root, class_names(4), per_class=3)
    return root
