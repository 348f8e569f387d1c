# Test configuration: make the repository root importable (dacerv2_continuous.py, multigoal_env.py), and run torch on
# one thread in the test processes, as the training runs the tests start do: pytest -n auto runs a test file per core.
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The Pendulum learning check, the longest single test (4-6 minutes), first: under -n with --dist loadfile
    --no-loadscope-reorder the other files share the other cores meanwhile, and no core waits on it at the end."""
    items.sort(key=lambda item: item.path.name != "test_learning.py")
