"""Streaming latent-to-pixel decoders (one protocol: the Wan2.1 VAE, a TAEHV-family tiny decoder, pixels) and
their encode paths (StreamingEncoder), used to prime a stream from given frames.

Importing this package does not import diffusers; WanVAEDecoder imports it when constructed.
"""
from .base import StreamingDecoder, StreamingEncoder, to_uint8_frames
from .pixel import PixelDecoder, PixelEncoder
from .taehv import TAEHVConfig, TAEHVDecoder, TAEHVNet
from .taehv_encoder import TAEHVEncoder, TAEHVEncoderNet
from .wan_vae import WanVAEDecoder, WanVAEEncoder

__all__ = ["StreamingDecoder", "StreamingEncoder", "to_uint8_frames", "WanVAEDecoder", "WanVAEEncoder",
           "PixelDecoder", "PixelEncoder", "TAEHVConfig", "TAEHVNet", "TAEHVDecoder", "TAEHVEncoderNet",
           "TAEHVEncoder"]
