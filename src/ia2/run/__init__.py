"""A run and a sweep end to end: the run's set-up (task, sets, model), the per-seed pipeline from baselines to
trained methods, result rows written atomically and resumed, output folders and their lock, model cards, saved
adapters read back, and sweeps of runs."""
