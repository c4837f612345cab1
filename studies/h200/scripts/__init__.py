"""The H200 study's scripts, run from the project root as ``python -m studies.h200.scripts.<name>``.

They use the installed ``gawm_lib`` but are no part of it: a user of gawm needs none of them. ``RESULTS`` is where
the study's committed results live (``studies/h200/results``).
"""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"
