"""Latent layouts and normalisation (spec §2.8, §4.2, §4.3).

Three places a latent can live, and the exact maps between them:

* **Token layout** ``(B, N, 128)``, ``N = gh·gw`` row-major, channel ``f = ph·64 + pw·32 + c``
  (order (ph, pw, c), the 32 VAE channels fastest).  The sampler works here; the reference's
  latent statistics (``latent_norm.json``) are in this order.
* **ComfyUI / Flux.2 layout** ``(B, 128, gh, gw)``, channel ``c·4 + ph·2 + pw`` (order (c, ph, pw)).
  A ComfyUI ``LATENT`` holds this; a FLUX.2 VAE's ``bn.running_mean/var`` are in this order.
* **Raw VAE latent** ``(B, 32, 2·gh, 2·gw)``: what the decoder's ``post_quant_conv`` takes,
  ``latent[c, 2r+ph, 2q+pw] = token[r·gw+q, ph·64+pw·32+c]``.

Normalisation: the model's latent space is ``z = (z_raw − shift) / scale`` with the reference's
hard-coded 128-vectors (token order).  ComfyUI's FLUX.2 VAE instead un-normalises with the
file's BatchNorm buffers, ``z_raw = z_bn · sqrt(running_var + 1e-4) + running_mean`` (ComfyUI
order); :func:`ref_to_bn_space` re-expresses a reference-space latent in that BN space so that a
plain ``VAE.decode`` reproduces the reference's raw latent.

All helpers are pure functions (no state, no ComfyUI); arithmetic on statistics is float32,
like the reference.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

PATCH = 2
VAE_CHANNELS = 32
LATENT_CHANNELS = VAE_CHANNELS * PATCH * PATCH  # 128
BN_EPS = 1e-4  # FLUX.2 VAE BatchNorm eps (REF AutoEncoder.bn_eps, ComfyUI AutoencodingEngineLegacy.bn_eps)
LATENT_NORM_PATH = Path(__file__).with_name("latent_norm.json")


def _token_index(c: int, ph: int, pw: int) -> int:
    return ph * 64 + pw * 32 + c


def _comfy_index(c: int, ph: int, pw: int) -> int:
    return c * 4 + ph * 2 + pw


def _build_permutation() -> list[int]:
    perm = [0] * LATENT_CHANNELS
    for c in range(VAE_CHANNELS):
        for ph in range(PATCH):
            for pw in range(PATCH):
                perm[_comfy_index(c, ph, pw)] = _token_index(c, ph, pw)
    return perm


#: ``COMFY_FROM_TOKEN[j]`` = token channel holding ComfyUI channel ``j``:
#: ``comfy[..., j] = token[..., COMFY_FROM_TOKEN[j]]``.
COMFY_FROM_TOKEN: tuple[int, ...] = tuple(_build_permutation())
#: inverse permutation: ``token[..., f] = comfy[..., TOKEN_FROM_COMFY[f]]``.
TOKEN_FROM_COMFY: tuple[int, ...] = tuple(sorted(range(LATENT_CHANNELS), key=lambda j: COMFY_FROM_TOKEN[j]))


def token_vector_to_comfy(v: torch.Tensor) -> torch.Tensor:
    """A 128-vector in token order (ph, pw, c) → ComfyUI order (c, ph, pw) (last dim)."""
    return v[..., list(COMFY_FROM_TOKEN)]


def comfy_vector_to_token(v: torch.Tensor) -> torch.Tensor:
    """A 128-vector in ComfyUI order (c, ph, pw) → token order (ph, pw, c) (last dim)."""
    return v[..., list(TOKEN_FROM_COMFY)]


# --------------------------------------------------------------------------- #
# Constants
# --------------------------------------------------------------------------- #


@lru_cache(maxsize=1)
def _load_norm() -> tuple[tuple[float, ...], tuple[float, ...]]:
    data = json.loads(LATENT_NORM_PATH.read_text())
    shift, scale = tuple(float(x) for x in data["shift"]), tuple(float(x) for x in data["scale"])
    if len(shift) != LATENT_CHANNELS or len(scale) != LATENT_CHANNELS:
        raise ValueError(f"{LATENT_NORM_PATH}: expected 128 shift and 128 scale values")
    return shift, scale


def latent_norm(device: Optional[torch.device | str] = None, order: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ``(shift, scale)`` float32 128-vectors, in ``order`` "token" (default) or "comfy"."""
    shift, scale = _load_norm()
    s = torch.tensor(shift, dtype=torch.float32, device=device)
    k = torch.tensor(scale, dtype=torch.float32, device=device)
    if order == "comfy":
        return token_vector_to_comfy(s), token_vector_to_comfy(k)
    if order != "token":
        raise ValueError(f"order must be 'token' or 'comfy', got {order!r}")
    return s, k


# --------------------------------------------------------------------------- #
# Layouts
# --------------------------------------------------------------------------- #


def _check_tokens(z: torch.Tensor, gh: int, gw: int) -> None:
    if z.ndim != 3 or z.shape[1] != gh * gw or z.shape[2] != LATENT_CHANNELS:
        raise ValueError(f"expected tokens of shape (B, {gh}·{gw}={gh * gw}, 128), got {tuple(z.shape)}")


def tokens_to_comfy(z: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(B, gh·gw, 128) token order (ph, pw, c) → (B, 128, gh, gw) ComfyUI order c·4 + ph·2 + pw."""
    _check_tokens(z, gh, gw)
    b = z.shape[0]
    x = z.reshape(b, gh, gw, PATCH, PATCH, VAE_CHANNELS)  # b r q ph pw c
    x = x.permute(0, 5, 3, 4, 1, 2)  # b c ph pw r q
    return x.reshape(b, LATENT_CHANNELS, gh, gw).contiguous()


def comfy_grid(latent: torch.Tensor, what: str = "latent", hint: str = "") -> tuple[int, int, int]:
    """(B, gh, gw) of a (B, 128, gh, gw) ComfyUI/Flux2 latent; a ``ValueError`` naming ``what`` otherwise."""
    if latent.ndim != 4 or latent.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"{what} must be an Ideogram 4 / Flux2 latent (B, 128, H/16, W/16), got "
                         f"{tuple(latent.shape)}" + (f"; {hint}" if hint else ""))
    b, _, gh, gw = latent.shape
    return int(b), int(gh), int(gw)


def comfy_to_tokens(latent: torch.Tensor) -> torch.Tensor:
    """(B, 128, gh, gw) ComfyUI order → (B, gh·gw, 128) token order (the inverse of :func:`tokens_to_comfy`)."""
    b, gh, gw = comfy_grid(latent)
    x = latent.reshape(b, VAE_CHANNELS, PATCH, PATCH, gh, gw)  # b c ph pw r q
    x = x.permute(0, 4, 5, 2, 3, 1)  # b r q ph pw c
    return x.reshape(b, gh * gw, LATENT_CHANNELS).contiguous()


def unpatchify(tokens: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(B, gh·gw, 128) tokens → (B, 32, 2gh, 2gw) raw VAE latent, exactly as REF ``_decode``."""
    _check_tokens(tokens, gh, gw)
    b = tokens.shape[0]
    x = tokens.reshape(b, gh, gw, PATCH, PATCH, VAE_CHANNELS)  # b r q ph pw c
    x = x.permute(0, 5, 1, 3, 2, 4)  # b c r ph q pw
    return x.reshape(b, VAE_CHANNELS, gh * PATCH, gw * PATCH).contiguous()


def patchify(latent: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(B, 32, H, W) raw VAE latent (H, W even) → ((B, N, 128) tokens, gh, gw); inverse of :func:`unpatchify`."""
    if latent.ndim != 4 or latent.shape[1] != VAE_CHANNELS or latent.shape[2] % 2 or latent.shape[3] % 2:
        raise ValueError(f"expected a raw VAE latent (B, 32, H, W) with even H, W, got {tuple(latent.shape)}")
    b, _, h, w = latent.shape
    gh, gw = h // PATCH, w // PATCH
    x = latent.reshape(b, VAE_CHANNELS, gh, PATCH, gw, PATCH)  # b c r ph q pw
    x = x.permute(0, 2, 4, 3, 5, 1)  # b r q ph pw c
    return x.reshape(b, gh * gw, LATENT_CHANNELS).contiguous(), gh, gw


def comfy_to_raw(latent: torch.Tensor) -> torch.Tensor:
    """(B, 128, gh, gw) ComfyUI order → (B, 32, 2gh, 2gw): ComfyUI's ``(c ph pw) i j → c (i ph) (j pw)``."""
    b, ch, gh, gw = latent.shape
    x = latent.reshape(b, VAE_CHANNELS, PATCH, PATCH, gh, gw).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, VAE_CHANNELS, gh * PATCH, gw * PATCH).contiguous()


# --------------------------------------------------------------------------- #
# Normalisation
# --------------------------------------------------------------------------- #


def denormalise(z: torch.Tensor) -> torch.Tensor:
    """Model space → raw VAE latent values, ``z·scale + shift`` in float32 (token order, last dim 128)."""
    shift, scale = latent_norm(z.device)
    return z.to(torch.float32) * scale + shift


def normalise(z_raw: torch.Tensor) -> torch.Tensor:
    """Raw VAE latent values → model space, ``(z_raw − shift) / scale`` in float32 (token order)."""
    shift, scale = latent_norm(z_raw.device)
    return (z_raw.to(torch.float32) - shift) / scale


def _bn_std_mean(running_mean: torch.Tensor, running_var: torch.Tensor, eps: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = running_mean.detach().to(device=device, dtype=torch.float32).reshape(1, -1, 1, 1)
    var = running_var.detach().to(device=device, dtype=torch.float32).reshape(1, -1, 1, 1)
    if mean.shape[1] != LATENT_CHANNELS or var.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"bn buffers must have 128 entries, got {mean.shape[1]} / {var.shape[1]}")
    return torch.sqrt(var + eps), mean


def ref_to_bn_space(latent: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                    eps: float = BN_EPS) -> torch.Tensor:
    """REF-space ComfyUI-layout latent (B, 128, gh, gw) → the VAE's BatchNorm space (same layout).

    ``z_raw = z·scale + shift`` (REF constants permuted to ComfyUI order), then
    ``z_bn = (z_raw − running_mean) / sqrt(running_var + eps)``.  Feeding ``z_bn`` to a FLUX.2 VAE that
    un-normalises with its bn buffers (ComfyUI ``VAEDecode``, diffusers) decodes the reference's raw
    latent.  Result is float32.
    """
    if latent.ndim != 4 or latent.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"expected (B, 128, gh, gw), got {tuple(latent.shape)}")
    shift, scale = latent_norm(latent.device, order="comfy")
    z_raw = latent.to(torch.float32) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    std, mean = _bn_std_mean(running_mean, running_var, eps, latent.device)
    return (z_raw - mean) / std


def bn_space_to_ref(latent: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                    eps: float = BN_EPS) -> torch.Tensor:
    """Inverse of :func:`ref_to_bn_space` (e.g. for a latent produced by core ``VAEEncode``)."""
    if latent.ndim != 4 or latent.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"expected (B, 128, gh, gw), got {tuple(latent.shape)}")
    std, mean = _bn_std_mean(running_mean, running_var, eps, latent.device)
    z_raw = latent.to(torch.float32) * std + mean
    shift, scale = latent_norm(latent.device, order="comfy")
    return (z_raw - shift.view(1, -1, 1, 1)) / scale.view(1, -1, 1, 1)


def bn_vs_ref(running_mean: torch.Tensor, running_var: torch.Tensor, eps: float = BN_EPS) -> dict[str, float]:
    """How far a VAE's bn statistics are from the REF constants (both compared in ComfyUI order)."""
    shift, scale = latent_norm(order="comfy")
    std, mean = _bn_std_mean(running_mean, running_var, eps, "cpu")
    std, mean = std.flatten(), mean.flatten()
    return {"max_abs_shift_diff": float((mean - shift).abs().max()),
            "max_abs_scale_diff": float((std - scale).abs().max()),
            "max_rel_scale_diff": float(((std - scale) / scale).abs().max())}
