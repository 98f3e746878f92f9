"""Imported first by every rule script: puts the repository's src/ on sys.path.

Snakemake adds this folder to a script's search path, so the package is
importable even in a --sdm conda environment that does not install it.
"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[2] / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
