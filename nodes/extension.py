"""V3 registration: collects every node list of the pack into one ComfyExtension."""

from comfy_api.latest import ComfyExtension, io


def _all_nodes() -> list[type[io.ComfyNode]]:
    nodes: list[type[io.ComfyNode]] = []
    # Each module exposes NODES: list[type[io.ComfyNode]].
    from . import caption_nodes

    nodes += caption_nodes.NODES
    for name in ("loader_nodes", "text_encoder_nodes", "sampler_nodes", "latent_nodes"):
        try:
            module = __import__(f"{__package__}.{name}", fromlist=["NODES"])
        except ModuleNotFoundError as exc:  # module not written yet in this checkout
            if exc.name and exc.name.endswith(name):
                continue
            raise
        nodes += module.NODES
    return nodes


class Ideogram4NativeExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return _all_nodes()
