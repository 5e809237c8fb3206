"""The model store: a home for artifacts, immutable versions, and aliases that say what serves.

``Store.open(uri)`` takes a directory or any fsspec URL (``s3://bucket/prefix``
with the ``s3`` extra). The store's layout and rules live in
:mod:`blackbox.store.store`; what a release is, and which names are valid, in
:mod:`blackbox.store.releases`; how each backend publishes atomically and
detects lost races, in :mod:`blackbox.store.backends`.
"""

from ..errors import StoreError
from .releases import Release, parse_ref
from .store import Store

__all__ = ["Release", "Store", "StoreError", "parse_ref"]
