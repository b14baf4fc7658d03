"""Prove tinyddpm's CuPy half on a GPU machine with one command, in about 7 minutes.

    PYTHONPATH=. python benchmarks/gpu_suite.py                  # every part; the report in runs/gpu_suite/
    python benchmarks/gpu_suite.py --parts b,c --out /tmp/gs     # only some parts
    python benchmarks/gpu_suite.py --data-dir ~/mnist            # MNIST IDX files instead of the shipped subset
    python benchmarks/gpu_suite.py --dry-run                     # NumPy in CuPy's place, tiny sizes: < 1 min

This file is only the command. The suite is the folder benchmarks/gpu_suite/, one file per part; its
__init__.py says what each part does and which file holds it.
"""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))   # benchmarks/: `import gpu_suite` finds the folder
    from gpu_suite import run

    sys.exit(run())
