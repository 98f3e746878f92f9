"""Imported first by every rule script: puts this checkout's src/ first on sys.path.

Snakemake adds this folder to a script's search path, so the package is
importable even in a --sdm conda environment that does not install it. First,
not merely present: an editable install of another checkout (or Snakemake's
own additions at the end of the path) must not win over the code the rule's
``input.code`` names.
"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[2] / "src")
if sys.path[:1] != [_SRC]:
    while _SRC in sys.path:
        sys.path.remove(_SRC)
    sys.path.insert(0, _SRC)
