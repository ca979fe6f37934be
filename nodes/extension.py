"""V3 registration: collects every node list of the pack into one ComfyExtension.

A node module that fails to import is a real error (shown by ComfyUI as a failed custom node),
never silently skipped.
"""

from comfy_api.latest import ComfyExtension, io

from . import (caption_nodes, encode_nodes, latent_nodes, loader_nodes, lora_nodes, sampler_nodes, speed_nodes,
               text_encoder_nodes)

NODE_MODULES = (caption_nodes, loader_nodes, lora_nodes, text_encoder_nodes, sampler_nodes, latent_nodes, encode_nodes,
                speed_nodes)


def all_nodes() -> list[type[io.ComfyNode]]:
    nodes: list[type[io.ComfyNode]] = []
    for module in NODE_MODULES:
        nodes += module.NODES
    return nodes


class Ideogram4NativeExtension(ComfyExtension):
    async def on_load(self) -> None:
        from .host import core_lora_loaders, folders

        folders.register()
        core_lora_loaders.install_core_loader_hooks()  # core's LoRA loaders: the pack's checks on the pack's models

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()
