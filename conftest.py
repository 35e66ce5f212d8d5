"""Development only: this checkout's own pytest configuration.

Deliberately empty of fixtures and plugins. In an editable install the shipped suite lives
in ``suites/`` below this file, so anything defined here would leak into ``pytest --gpuhost``
runs of developers and make them differ from users' runs. The plugin's tests keep their
fixtures in ``tests/conftest.py`` and their helpers in ``tests/*_support.py``; ``pyproject.toml``
loads pytester with ``-p pytester``.
"""
