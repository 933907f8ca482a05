"""cloudrec: self-hosted cloud recording for real-time audio/video rooms."""

__version__ = "0.1.0"
