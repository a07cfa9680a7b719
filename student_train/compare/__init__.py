"""`student-train compare`: every method's default student from one cache, trained, evaluated and
tabulated side by side (run.py), with its recipes (recipes.py), the cache's cost (cost.py), the
tables (report.py) and the models x step counts grid (grid.py)."""
