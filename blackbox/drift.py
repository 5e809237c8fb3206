"""Moved to :mod:`blackbox.monitoring.drift` (#18): this alias goes once nothing imports the old path."""

import sys

from .monitoring import drift as _moved

sys.modules[__name__] = _moved
