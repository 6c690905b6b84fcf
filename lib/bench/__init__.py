"""Speed measurements and what the fast code is held to.

Each benchmark section is a module (``data``, ``core``, ``model``, ``train``, ``valid``) whose
``run(quick)`` returns rows ``{name, value, unit, detail}``; ``tools/benchmark.py`` runs them.
:mod:`higherpose.bench.reference` keeps the official HigherHRNet loops that the tests and the
benchmarks compare the vectorised code with.
"""
