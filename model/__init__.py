"""Pure-torch Ideogram 4: the native DiT, checkpoint loading, quantised layers, caption contract.

Importable without ComfyUI; never imports ``nodes/``.
"""

from .config import DiTConfig
from .dit import Ideogram4DiT
from .loading import load_transformer
from .text_encoder import Ideogram4TextEncoder, load_text_encoder

__all__ = ["DiTConfig", "Ideogram4DiT", "Ideogram4TextEncoder", "load_text_encoder", "load_transformer"]
