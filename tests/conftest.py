# Test configuration: make the repository root importable (dacerv2_continuous.py, multigoal_env.py)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
