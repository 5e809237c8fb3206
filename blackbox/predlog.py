"""Moved to :mod:`blackbox.monitoring.predlog` (#18): this alias goes once nothing imports the old path."""

import sys

from .monitoring import predlog as _moved

sys.modules[__name__] = _moved
