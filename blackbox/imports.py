"""Moved to :mod:`blackbox.containment.imports` (#18): this alias goes once nothing imports the old path."""

import sys

from .containment import imports as _moved

sys.modules[__name__] = _moved
