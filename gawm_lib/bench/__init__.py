"""General benchmarks a user may run: each is a script, ``python -m gawm_lib.bench.<name>``, that appends its numbers,
with the machine, commit and command, to ``data/benchmarks/``:

- ``server_bench`` (with ``server_load``): the model server against the bare model on this machine's CPU or GPU
  (``server_cpu.json``, ``server_cuda.json``);
- ``loadgen_bench`` (with ``locust_driver``): the load generator against Locust, on a null server (``loadgen.json``);
- ``whisper_wer``: served Whisper's word error rate on real speech (``server_whisper_wer.json``);
- ``capacity_levels``: the open-loop rates that shares of a finished suite's measured capacity come to.

``null_server`` is a null OIP v2 server (optionally injecting faults) that the load generator's benchmark and tests
drive. The H200 study's own scripts (its report, model checks and probes) live with the study, in
``studies/h200/scripts/``.
"""
