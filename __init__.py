"""Ideogram 4 Native — ComfyUI node pack entry point.

ComfyUI imports this package from ``custom_nodes/<folder>``. Nothing here imports
ComfyUI at module import time, so ``model/`` and ``sampling/`` stay usable
(and testable) without it; the node classes are only imported when ComfyUI asks
for the extension.
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes.extension import Ideogram4NativeExtension

    return Ideogram4NativeExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
