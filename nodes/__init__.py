"""ComfyUI adapters (thin). All model math lives in ``model/`` and ``sampling/``."""
