"""The burn tier's host side: NVML sampling with a temperature guard, pass criteria, saved series.

The workload itself is ``pytest_gpuhost/workloads/burn.py``, a standalone script run in a container
or on the host; :mod:`pytest_gpuhost.burn.workload` builds its command line and reads its output.
Nothing here imports ``pynvml`` or ``matplotlib`` at import time.
"""
