"""Where the session keeps itself on pytest's config: a key the fixtures can import without
importing the session module (which imports the fixture modules to register them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_gpuhost.session import GpuhostSession

SESSION_KEY: pytest.StashKey[GpuhostSession] = pytest.StashKey()
