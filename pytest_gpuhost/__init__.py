"""pytest-gpuhost: a conformance suite for GPU Docker hosts, run as ``pytest --gpuhost``.

This module stays tiny on purpose: the plugin is loaded in every pytest session of the
environment, so nothing heavy may be imported at package import time.
"""

__version__ = "0.1.0"
