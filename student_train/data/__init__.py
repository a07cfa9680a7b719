"""Phase two's data: batches of cached fields on the device (batches.py) and per-sample random draws
(randomness.py)."""
