"""Tiered cache: in-process L1, Redis L2, memcached L3.

(Being built; the public surface is re-exported here.)
"""

from buttress.cache._missing import MISSING, Missing

__all__ = ["MISSING", "Missing"]
