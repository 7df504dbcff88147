"""``talkie-kernels bench`` and the pytest-benchmark suites' machinery (``benchmarks/``).

The bench imports the library; nothing in the library imports the bench.
Importing this package imports none of its modules.
"""
