"""Moved to :mod:`blackbox.containment.isolation` (#18): this alias goes once nothing imports the old path."""

import sys

from .containment import isolation as _moved

sys.modules[__name__] = _moved
