"""Generative workload models: traces from runs, generators fitted on them, fidelity on held-out runs, replay.

- :mod:`.traces`: what a workload trace is (``load_traces``: arrivals, demands, resource series, conditions, payloads).
- :mod:`.condition`: ``Condition``, what a generator is conditioned on (workload, level, replicas, max batch size).
- :mod:`.arrivals`, :mod:`.demands`, :mod:`.resources`: the generators, each ``Kind.fit(traces, condition)`` then
  ``generator.sample(condition, duration_s, seed)``; ``ARRIVALS``, ``DEMANDS``, ``RESOURCES`` name them.
- :mod:`.model`: ``WorkloadModel`` (one generator of each family per workload, saved as a file) and ``SyntheticTrace``
  (written as the CSV the load generator's ``trace`` scenario replays).
- :mod:`.fidelity`: the metrics (KS, Wasserstein, autocorrelation error, discriminative and predictive scores).
- :mod:`.evaluation`: held-out series next to synthetic ones, scored; :mod:`.figures`: one figure per series.
- :mod:`.replay`: a synthetic trace replayed against the real local server, latency compared with the source runs.

``gawm synth fit RUN... --out MODEL`` and ``gawm synth sample MODEL --duration 60 --out trace.csv`` (:mod:`.cli`).
Nothing is imported here, so ``import gawm_lib.synth`` stays cheap.
"""
