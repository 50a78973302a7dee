"""Training: the loop (`loop.py`), one step (`step.py`), the process group (`dist.py`, from what `launch.py` reads),
checkpoints, optimizer and schedule, metrics, progress."""
