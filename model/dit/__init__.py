"""The Ideogram 4 DiT: configuration, constants, multi-axis RoPE, the transformer and ``load_transformer``."""

from .config import DiTConfig, expected_shapes
from .loading import COMPONENTS, TEXT_PROJECTION_MODULES, infer_config, inspect_transformer, load_transformer
from .transformer import Ideogram4DiT, image_position_ids, text_position_ids

__all__ = ["DiTConfig", "expected_shapes", "COMPONENTS", "TEXT_PROJECTION_MODULES", "infer_config", "inspect_transformer",
           "load_transformer",
           "Ideogram4DiT", "image_position_ids", "text_position_ids"]
