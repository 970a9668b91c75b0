"""The sink + window KV cache: its policy, the runtime ring cache and the plain-PyTorch reference oracle."""
from rfrt.cache.oracle import ReferenceCache
from rfrt.cache.policy import CachePolicy
from rfrt.cache.ring import RingCache

__all__ = ["CachePolicy", "ReferenceCache", "RingCache"]
