"""The project's experiment drivers: not part of the installed ``muses`` package, run from a source checkout.

One module or package per benchmark or experiment, its run-sized settings in ``configs/`` (YAML). Run them from the
repository root, e.g. ``python -m benchmarks.adapters --config configs/bench/adapters/quick.yaml``. They measure
with library functions (``muses.evaluation.efficiency``, ``muses.adapters.measure``, ...); what they add is the
experiment: its data, its conditions, its report.
"""
