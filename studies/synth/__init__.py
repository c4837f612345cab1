"""The synth study: generative workload models fitted on local CPU runs, scored on held-out runs, replayed
(README.md)."""
