import os

import pytest
import torch

# Tests share 2 cores; one intra-op thread keeps them from oversubscribing the box.
torch.set_num_threads(1)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
