"""medgen benchmarks: speed (``python -m benchmark.speed``) and notebook/quality runs.

Every benchmark writes ``reports/benchmark/<name>.csv`` with the columns
``measure,value,unit,goal,holds`` and the same table as markdown beside it, through the
shared harness in ``benchmark/harness.py`` (report rows, interleaved timing, the entry point).
"""
