"""``pagewalk fuzz``: random differential testing of the simulator against the live kernel.

* :mod:`generate` -- random scenarios (scenario.md version 1), valid by construction,
  table-driven by step kind with weights per class;
* :mod:`discover` -- runs a scenario recording each step's errno or signal instead of
  failing (on the live kernel, or in the simulator), and annotates the steps with them;
* :mod:`shrink` -- reduces a failing scenario while a predicate still holds;
* :mod:`campaign` -- one seed after another: generate, discover, compare, classify, shrink;
* :mod:`command` -- the ``pagewalk fuzz`` command (loaded lazily by pagewalk.cli).
"""
