"""Moved to :mod:`blackbox.containment.serializers` (#18): this alias goes once nothing imports the old path."""

import sys

from .containment import serializers as _moved

sys.modules[__name__] = _moved
