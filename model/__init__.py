"""Pure-torch Ideogram 4: the native DiT, checkpoint loading, quantised layers, caption contract.

Importable without ComfyUI; never imports ``nodes/``.
"""

from .config import DiTConfig
from .dit import Ideogram4DiT
from .loading import load_transformer

__all__ = ["DiTConfig", "Ideogram4DiT", "load_transformer"]
