"""Recipes and studies built on the library: the CPU quick start (``tools/quickstart.py``), the
multi-seed ablation runner (``tools/ablation.py``) and the ground-truth grouping oracle
(``tools/oracle.py``)."""
