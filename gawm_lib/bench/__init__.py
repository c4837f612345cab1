"""Benchmarks: each is a script, ``python -m gawm_lib.bench.<name>``, that writes its numbers with the machine and
commit to ``data/benchmarks/``. ``null_server`` is a null OIP v2 server (optionally injecting faults) that the load
generator's benchmark and tests drive."""
