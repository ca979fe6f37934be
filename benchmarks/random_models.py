"""Random-weight DiTs in any storage format, built layer by layer directly on the target device.

Shared by ``bench_vs_core.py`` and ``gpu_check.py``.  The modules to use are passed in, so the same
builder serves the pack imported as a package inside ComfyUI and the plain ``model`` package.
"""

from __future__ import annotations

SCHEMES = {"bf16": None, "fp8": "fp8_rowwise", "fp8_fast": "fp8_rowwise", "fp8_scaled": "fp8_tensorwise",
           "nf4": "nf4"}


def random_dit(dit_cls, cfg, fmt: str, *, ck, operations, device="cpu", seed: int = 0, image_only: bool = False):
    """``dit_cls(cfg)`` with seeded random bf16 weights; every Linear packed as ``fmt`` (see ``SCHEMES``).

    ``ck`` is the ``model.checkpoints`` module (quantisers, ``NF4_CODE``); ``operations`` the namespace
    (its ``QuantizedLinear`` is used for packed layers).  Returns (model, state dict of the bf16 weights
    before packing — only when ``fmt == "bf16"``, else None).
    """
    import torch

    if fmt not in SCHEMES:
        raise ValueError(f"format {fmt!r} is not one of {sorted(SCHEMES)}")
    scheme = SCHEMES[fmt]
    g = torch.Generator(device=device).manual_seed(seed)
    model = dit_cls(cfg, dtype=torch.bfloat16, device="meta", operations=operations, image_only=image_only)

    def rand(shape, scale):
        return (torch.randn(shape, generator=g, device=device) * scale).to(torch.bfloat16)

    bf16_state = {} if scheme is None else None
    for name, module in list(model.named_modules()):
        params = dict(module.named_parameters(recurse=False))
        if not params:
            continue
        if isinstance(module, torch.nn.Linear) and scheme is not None:
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            q = operations.QuantizedLinear(module.in_features, module.out_features, bias=module.bias is not None,
                                           scheme=scheme, device=device, dtype=torch.bfloat16)
            w = rand((module.out_features, module.in_features), module.in_features ** -0.5)
            if scheme == "nf4":
                packed, absmax = ck.quantize_nf4(w)
                q.weight.data, q.absmax.data = packed, absmax
                q.quant_map.data = torch.tensor(ck.NF4_CODE, device=device)
            else:
                quant = ck.quantize_fp8_rowwise if scheme == "fp8_rowwise" else ck.quantize_fp8_tensorwise
                q.weight.data, q.weight_scale.data = quant(w)
            del w
            if q.bias is not None:
                q.bias.data = rand((module.out_features,), 0.02)
            q.fast_fp8 = fmt == "fp8_fast"
            setattr(parent, leaf, q)
            continue
        for leaf, p in params.items():
            if p.ndim == 1:
                value = (1 + rand(p.shape, 0.1).float()).to(torch.bfloat16) if leaf == "weight" else rand(p.shape, 0.02)
            else:
                value = rand(p.shape, p.shape[-1] ** -0.5)
            module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
            if bf16_state is not None:
                bf16_state[f"{name}.{leaf}" if name else leaf] = value
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            raise RuntimeError(f"buffer {name} left on the meta device")
    model.eval().requires_grad_(False)
    return model, bf16_state


def official_entries(cfg, fmt: str, seed: int = 0):
    """(name, dtype, shape, make()) of every tensor of an official-layout file in ``fmt`` (``tools.make_test_checkpoints``
    formats: bf16, fp8, nf4, …), for ``bench_formats.write_safetensors_streamed``: the layout comes from converting
    meta tensors, the data from one seeded random weight at a time (RAM for one layer, also at the real size)."""
    import torch

    from model.dit import expected_shapes
    from tools.make_test_checkpoints import convert, random_tensor

    cache = {}

    def make(key, shape, i, name):
        if cache.get("key") != key:  # entries of one weight are written one after another
            g = torch.Generator().manual_seed(seed * 100003 + i)
            cache.update(key=key, tensors=convert({key: random_tensor(key, shape, g)}, fmt))
        return cache["tensors"][name]

    out = []
    for i, (key, shape) in enumerate(expected_shapes(cfg).items()):
        for name, meta in convert({key: torch.empty(shape, device="meta")}, fmt).items():
            out.append((name, meta.dtype, tuple(meta.shape), lambda k=key, s=shape, i=i, n=name: make(k, s, i, n)))
    return out
