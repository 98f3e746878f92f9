"""Imported first by every rule script: puts the repository's src/ on sys.path.

Snakemake adds this folder to a script's search path, so the package is
importable even in a --sdm conda environment that does not install it.
"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[2] / "src")
# first even when already on the path: Snakemake's script preamble appends the workflow's sys.path, which
# holds this src/ behind site-packages, where an editable install of another checkout would win
if sys.path[:1] != [_SRC]:
    if _SRC in sys.path:
        sys.path.remove(_SRC)
    sys.path.insert(0, _SRC)
