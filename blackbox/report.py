"""Moved to :mod:`blackbox.monitoring.report` (#18): this alias goes once nothing imports the old path."""

import sys

from .monitoring import report as _moved

sys.modules[__name__] = _moved
