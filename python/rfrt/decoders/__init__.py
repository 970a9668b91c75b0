"""Streaming latent-to-pixel decoders: one protocol, the Wan2.1 VAE and a TAEHV-family tiny decoder.

Importing this package does not import diffusers; WanVAEDecoder imports it when constructed.
"""
from .base import StreamingDecoder, to_uint8_frames
from .pixel import PixelDecoder
from .taehv import TAEHVConfig, TAEHVDecoder, TAEHVNet
from .wan_vae import WanVAEDecoder

__all__ = ["StreamingDecoder", "to_uint8_frames", "WanVAEDecoder", "PixelDecoder", "TAEHVConfig", "TAEHVNet",
           "TAEHVDecoder"]
