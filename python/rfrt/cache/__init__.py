"""The sink + window KV cache: its policy and geometry, the runtime ring cache and the plain-PyTorch oracle."""
from rfrt.cache.layout import CacheLayout
from rfrt.cache.oracle import ReferenceCache
from rfrt.cache.policy import CachePolicy
from rfrt.cache.ring import RingCache

__all__ = ["CacheLayout", "CachePolicy", "ReferenceCache", "RingCache"]
