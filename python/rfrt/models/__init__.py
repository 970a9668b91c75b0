"""The one causal Wan2.1 DiT, its attention backends, config and checkpoint loaders (SPEC §1, §5.1)."""
from .attention import AttentionBackend, BlockCausalAttention, FrameGrid, FullAttention, block_causal_mask
from .config import ConfigError, ModelConfig
from .diffusers_names import diffusers_to_wan, wan_to_diffusers
from .dit import CausalWanDiT, CrossKV
from .loading import CheckpointError, check_state_dict, infer_config, load_model, normalize_names, read_checkpoint

__all__ = [
    "AttentionBackend", "BlockCausalAttention", "CausalWanDiT", "CheckpointError", "ConfigError", "CrossKV",
    "FrameGrid", "FullAttention", "ModelConfig", "block_causal_mask", "check_state_dict", "diffusers_to_wan",
    "infer_config", "load_model", "normalize_names", "read_checkpoint", "wan_to_diffusers",
]
