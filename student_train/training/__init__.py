"""The training loop of `student-train run` (loop.py)."""
