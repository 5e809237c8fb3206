"""Moved to :mod:`blackbox.containment.embedding` (#18): this alias goes once nothing imports the old path."""

import sys

from .containment import embedding as _moved

sys.modules[__name__] = _moved
