"""Training: the loop (`loop.py`), one step (`step.py`), optimizer and schedule, metrics."""
