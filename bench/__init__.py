"""Benchmarks of the service: figures printed as a table and written to ``bench/results.json``.

Run ``scripts/bench`` (or ``python -m bench [--quick] [--only NAME]``). These are measurements,
not tests: nothing here asserts; each figure is compared with a baseline measured in the same run
and with its goal.
"""
