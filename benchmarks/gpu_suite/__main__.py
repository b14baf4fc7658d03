"""`python -m gpu_suite` in benchmarks/ (or `python benchmarks/gpu_suite`): the same as benchmarks/gpu_suite.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # benchmarks/, where this folder is found

from gpu_suite import run  # noqa: E402

sys.exit(run())
