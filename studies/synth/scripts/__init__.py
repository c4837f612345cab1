"""The synth study's scripts, run from the project root as ``python -m studies.synth.scripts.<name>``.

They use the installed ``gawm_lib`` but are no part of it. ``RESULTS`` is where the study's committed results live
(``studies/synth/results``)."""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"
