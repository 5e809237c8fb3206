"""Moved to :mod:`blackbox.containment.environment` (#18): this alias goes once nothing imports the old path."""

import sys

from .containment import environment as _moved

sys.modules[__name__] = _moved
