"""``talkie-kernels bench`` and the machinery of the pytest-benchmark suites (``benchmarks/``).

The command (``python -m talkie_kernels.bench`` runs it too):

* ``cli`` -- the flags, their checks and ``main``;
* ``settings`` -- ``Settings``: what a run measures and how long it samples;
* ``runner`` -- one run: the machine's read bandwidth and FMA peak, the
  sections per kernel table, the report;
* ``model_runs``, ``op_runs``, ``attention`` -- the sections: models, per-op
  and ``linear`` tables, attention by context length (``--depths``);
* ``records`` -- one record per implementation of a workload, and the
  floors, shares and speedups derived from them;
* ``report`` -- the tables, ``--json`` and ``--plot``; ``targets`` -- the
  targets each run is judged against.

Shared with ``benchmarks/``: ``timing`` (the timing loop, the per-op inputs
and steps, the machine probes, run metadata), ``models`` (the random-weight
and checkpoint models and their workloads) and ``linear`` (the per-shape
``linear`` benchmark).

The bench imports the library; nothing in the library imports the bench.
Importing this package imports none of its modules.
"""
