"""GPU memory policy for the two Ideogram 4 DiTs — a pure function of sizes and free memory.

No torch and no ComfyUI import: the numbers come in as arguments, so the decision is unit-tested
with simulated cards (``tests/test_memory_policy.py``) and shown verbatim in the nodes' UI text.

Policy
------
Both DiTs run at every step (conditional pass, then image-only unconditional pass), so evicting
one to make room for the other would copy a whole 9.3 B model over PCIe twice per step.  The
policy therefore always loads the pair *together, once per run*, through ComfyUI's
``load_models_gpu`` (which also evicts the text encoder / VAE / other models first):

* ``resident`` — both fit next to the activation reserve: both fully on the device
  (``force_full_load``), nothing is copied during sampling (the dominant speed lever).
* ``partial`` — they do not both fit: every byte of the device budget holds weights, the rest
  stays in host memory and only that remainder is streamed layer by layer each step
  (ComfyUI's lowvram ``comfy_cast_weights`` path, which our operations support, packed fp8 /
  nf4 weights included).  ComfyUI fills models in reverse list order; we pass
  ``[conditional, unconditional]`` so the unconditional model (the cheaper pass) is made
  resident first and the streamed remainder belongs to the conditional pass, whose longer
  ``[text ; image]`` sequence hides more of the copy time.  The streamed bytes per step are
  the same for any split: ``total − budget``.
* ``stream`` — (almost) nothing fits (``--novram`` or a tiny card): every layer is streamed.
* ``cpu`` — the compute device is the CPU: weights stay where they are.

The budget arithmetic mirrors ``comfy.model_management.load_models_gpu`` (ComfyUI 0.33):
``min_req = max(minimum_inference, reserve + extra_reserved)`` and, per model in load order,
``budget = max(0, free − min_req, min(free · MIN_WEIGHT_MEMORY_RATIO, free − minimum_inference))``
(NORMAL/LOW VRAM).  The constants are passed in (:class:`ComfyMemoryConstants`) so the function
stays pure; ``nodes/comfy_model.py`` reads the live values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1024 ** 2
GiB = 1024 ** 3

VRAM_STATES = ("disabled", "no", "low", "normal", "high", "shared")


@dataclass(frozen=True)
class ComfyMemoryConstants:
    """The ComfyUI knobs ``load_models_gpu`` uses (defaults: ComfyUI 0.33 on Linux/NVIDIA)."""

    extra_reserved: int = 400 * MiB  # model_management.EXTRA_RESERVED_VRAM
    minimum_inference: int = int(0.8 * GiB) + 400 * MiB  # model_management.minimum_inference_memory()
    min_weight_ratio: float = 0.0  # model_management.MIN_WEIGHT_MEMORY_RATIO (0.4 on non-NVIDIA)
    vram_state: str = "normal"  # VRAMState of the load device, lower case ("disabled" = CPU)

    def __post_init__(self) -> None:
        if self.vram_state not in VRAM_STATES:
            raise ValueError(f"vram_state {self.vram_state!r} is not one of {VRAM_STATES}")


@dataclass(frozen=True)
class ModelSize:
    """One DiT as the policy sees it."""

    name: str
    total: int  # bytes of all weights/buffers (packed sizes for fp8 / nf4)


@dataclass(frozen=True)
class MemoryPlan:
    mode: str  # "cpu" | "resident" | "partial" | "stream"
    available: int  # bytes ComfyUI can make available on the device (free + evictable models)
    reserve: int  # bytes kept free for activations (ComfyUI's min_req)
    resident: dict = field(default_factory=dict)  # name -> bytes of weights kept on the device
    totals: dict = field(default_factory=dict)  # name -> total bytes
    load_order: tuple = ()  # order in which ComfyUI fills the device
    force_full_load: bool = False
    memory_required: int = 0  # argument for load_models_gpu
    minimum_memory_required: int = 0  # argument for load_models_gpu
    notes: tuple = ()
    ram: "RamBudget | None" = None  # system RAM (see ram_budget)

    @property
    def streamed_per_step(self) -> int:
        """Bytes copied to the device per sampling step (both passes together; none on the CPU, where every
        weight counts as resident)."""
        return sum(self.totals[n] - self.resident.get(n, 0) for n in self.totals)

    @property
    def weights_resident(self) -> int:
        return sum(self.resident.values())

    def summary(self) -> str:
        if self.mode == "cpu":
            lines = ["memory: cpu — weights stay in system RAM, nothing is streamed"]
        else:
            head = {"resident": "both models resident (nothing streamed)",
                    "partial": "partial — the part that does not fit is streamed every step",
                    "stream": "stream — almost nothing fits, every layer is streamed (slow)"}[self.mode]
            lines = [f"memory: {head}",
                     f"  {gib(self.available)} available on the device, {gib(self.reserve)} kept for activations"]
            for name in self.load_order:
                lines.append(f"  {name}: {gib(self.resident.get(name, 0))} of {gib(self.totals[name])} resident")
            if self.streamed_per_step:
                lines.append(f"  streamed per step: {gib(self.streamed_per_step)}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.ram is not None:
            lines += self.ram.lines()
        return "\n".join(lines)


@dataclass(frozen=True)
class RamBudget:
    """System RAM for one run.

    ``private``: bytes the kernel cannot drop — weights that are not views of their file (patched or
    converted ones) plus, on the CPU, the activations.  ``mapped``: file-backed weight bytes the run
    reads (every weight on the CPU; the streamed part on a GPU) — clean pages the kernel may drop and
    re-read from disk.  ``total`` / ``available``: the machine's RAM and what is available now
    (free + reclaimable cache).
    """
    total: int
    available: int
    private: int
    mapped: int

    @property
    def fits(self) -> bool:
        return self.private <= self.available

    def warnings(self) -> tuple:
        if not self.fits:
            return (f"WARNING: this run needs {gib(self.private)} of private system RAM and only "
                    f"{gib(self.available)} are available: expect an out-of-memory kill (free RAM, use an fp8/nf4 "
                    f"file, or drop the LoRA)",)
        if self.private + self.mapped > self.available:
            return (f"system RAM is short for the {gib(self.mapped)} of weights read from the files: pages are "
                    f"re-read from disk (slower, not fatal)",)
        return ()

    def lines(self) -> list:
        out = [f"  system RAM: {gib(self.private)} private + {gib(self.mapped)} file-backed (droppable) of "
               f"{gib(self.available)} available ({gib(self.total)} total)"]
        return out + [f"  {w}" for w in self.warnings()]


def ram_budget(plan: MemoryPlan, *, total: int, available: int, private_weights: int, file_backed: dict,
               activation_cpu: int = 0) -> MemoryPlan:
    """``plan`` with its :class:`RamBudget`: ``file_backed`` is name → file-backed weight bytes of each model;
    on the CPU all of them are read, on a device only the part that is not resident (streamed)."""
    if plan.mode == "cpu":
        mapped = sum(file_backed.values())
        private = private_weights + activation_cpu
    else:
        mapped = sum(min(file_backed.get(n, 0), plan.totals[n] - plan.resident.get(n, 0)) for n in plan.totals)
        private = private_weights
    from dataclasses import replace
    return replace(plan, ram=RamBudget(int(total), int(available), int(private), int(mapped)))


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def comfy_budget(free: int, min_req: int, constants: ComfyMemoryConstants) -> int:
    """Bytes of weights ComfyUI's NORMAL/LOW-VRAM path lets one model load with ``free`` bytes free."""
    return int(max(0, free - min_req, min(free * constants.min_weight_ratio, free - constants.minimum_inference)))


def plan_memory(models: list[ModelSize], available: int, activation: int,
                constants: ComfyMemoryConstants = ComfyMemoryConstants()) -> MemoryPlan:
    """Decide how the DiT pair is placed for one sampling run.

    Args:
        models: the models in the order they are passed to ``load_models_gpu``
            (``[conditional, unconditional]``); ComfyUI fills the device in reverse order.
        available: bytes ComfyUI can obtain on the device: free memory plus the memory of every
            model it may evict (other models and the parts of these two already loaded).
        activation: estimated peak activation bytes of the largest pass (see
            :func:`activation_bytes`).
        constants: ComfyUI's allocation knobs.
    """
    if not models:
        raise ValueError("plan_memory needs at least one model")
    if available < 0 or activation < 0:
        raise ValueError("available and activation must be >= 0")
    totals = {m.name: int(m.total) for m in models}
    load_order = tuple(m.name for m in reversed(models))
    min_req = int(max(constants.minimum_inference, activation + constants.extra_reserved))
    common = dict(available=int(available), reserve=min_req, totals=totals, load_order=load_order,
                  memory_required=int(activation), minimum_memory_required=int(activation))
    total = sum(totals.values())

    if constants.vram_state == "disabled":
        return MemoryPlan(mode="cpu", resident=dict(totals), **common)
    if constants.vram_state in ("high", "shared"):
        notes = ()
        if total + min_req > available:
            notes = (f"--highvram/--gpu-only keeps every weight on the device although "
                     f"{gib(total + min_req)} are needed and {gib(available)} are available: expect out-of-memory",)
        return MemoryPlan(mode="resident", resident=dict(totals), force_full_load=True, notes=notes, **common)
    if constants.vram_state == "no":
        return MemoryPlan(mode="stream", resident={n: 0 for n in totals},
                          notes=("--novram: every layer is streamed from system RAM each step",), **common)

    if total + min_req <= available:
        return MemoryPlan(mode="resident", resident=dict(totals), force_full_load=True, **common)

    free = int(available)
    resident: dict[str, int] = {}
    for name in load_order:
        budget = comfy_budget(free, min_req, constants)
        res = min(totals[name], budget)
        resident[name] = res
        free -= res
    notes = []
    if sum(resident.values()) == 0:
        mode = "stream"
        notes.append(f"only {gib(available)} available and {gib(min_req)} are needed for activations")
    else:
        mode = "partial"
    notes.append(f"to keep both models resident {gib(total + min_req)} would be needed")
    return MemoryPlan(mode=mode, resident=resident, notes=tuple(notes), **common)


def activation_bytes(batch: int, n_img: int, n_txt: int, *, emb_dim: int, intermediate: int, num_heads: int,
                     llm_features_dim: int, act_bytes: int = 2, dequant_bytes: int = 0, text_dequant_bytes: int = 0,
                     flash_attention: bool = True) -> int:
    """Peak activation memory of the conditional pass (the larger one) for ``batch`` images.

    A forward has two stages that peak at different times, so the peak is the larger one, not their sum:

    * **text stage** (the first step of a run; the projection is cached for the other steps): the float32
      text features (B, L_txt, F) cast and normalised (≈ 12 bytes per element in flight) and the decode
      temporary of the text projection's weight, ``text_dequant_bytes``;
    * **block stage**: per block the MLP phase dominates — ``w1``, SiLU, ``w3`` and their product
      (4 × L × I) next to the residual stream and the normalised input (≈ 3 × L × E) — with the float32
      features still held (4 bytes per element) and the largest decode temporary of a block's quantised or
      streamed weight, ``dequant_bytes``.  Without a fused attention kernel the score matrix (heads × L²
      in the compute dtype, ×2 for softmax) is materialised.  A batch of captions of different lengths has
      a padding mask (B, 1, L, L), kept for the run (bool, or additive in the compute dtype) and, as bool,
      converted to the compute dtype by SDPA in every call: ``act_bytes + 1`` bytes per element whenever
      ``batch > 1`` has text.

    Both decode temporaries come from ``nodes.host.comfy_model.dequant_temp_bytes``; a caller that passes one
    worst-of-all-layers figure as ``dequant_bytes`` gets a larger (safe) estimate.  The velocities and the
    sampler's latents (fp32) are held throughout.  A 25 % margin covers the allocator's fragmentation.
    """
    if min(batch, n_img) < 1 or n_txt < 0:
        raise ValueError("batch and n_img must be >= 1, n_txt >= 0")
    length = n_img + n_txt
    features = n_txt * llm_features_dim
    text_stage = batch * features * 12 + text_dequant_bytes if n_txt else 0
    block = length * (3 * emb_dim + 4 * intermediate) * act_bytes
    attn = 0 if flash_attention else 2 * num_heads * length * length * act_bytes
    mask = batch * length * length * (act_bytes + 1) if batch > 1 and n_txt > 0 else 0
    block_stage = batch * (block + attn + features * 4) + mask + dequant_bytes
    io = batch * 6 * n_img * 128 * 4  # z, noise, both velocities, the combination, the update (fp32)
    peak = max(text_stage, block_stage) + io
    return int(peak * 1.25) + 64 * MiB


DECODE_KINDS = ("linear", "fp8", "nf4", "packed", "compiled")


PATCH_MATH_FACTOR = 2  # ComfyUI's LOWVRAM_PATCH_ESTIMATE_MATH_FACTOR: a weight patch merged on the fly


def decode_temp_bytes(layers, *, act_bytes: int, nf4_kernel: bool, nf4_chunk_temp: int) -> int:
    """Largest temporary one Linear needs when its weight is decoded or cast on the fly.

    ``layers``: ``(kind, n_weights)`` or ``(kind, n_weights, merged)`` with kind ``"linear"`` (a plain weight,
    counted when streamed: its copy in the compute dtype), ``"fp8"`` (one decoded copy, scaled in place) or
    ``"nf4"`` (the decoded weight; without bitsandbytes' kernel plus the pure-torch codec's per-chunk
    temporaries, ``nf4_chunk_temp`` bytes, independent of the layer size) or ``"packed"`` (the other
    codecs — ComfyUI nvfp4/mxfp8/int8, GGUF — counted conservatively as the decoded weight plus a
    float32 intermediate of the same size) or ``"compiled"`` (a GGUF or nf4 layer decoded by its probed compiled kernel,
    ``gguf_fused`` / ``nf4_fused``: one pass writes the decoded weight, no intermediate nor chunk temporaries).  ``merged``: a weight patch (LoHa, LoKr, DoRA, ``diff``… — not a
    plain LoRA, which runs as a side branch) is merged into the decoded weight on every call, which holds
    ``PATCH_MATH_FACTOR`` more weight-sized temporaries in the compute dtype (ComfyUI's own estimate).
    """
    worst = 0
    for kind, n, *merged in layers:
        if kind not in DECODE_KINDS:
            raise ValueError(f"layer kind {kind!r} is not one of {', '.join(DECODE_KINDS)}")
        extra = nf4_chunk_temp if kind == "nf4" and not nf4_kernel else 4 * int(n) if kind == "packed" else 0
        if merged and merged[0]:
            extra += PATCH_MATH_FACTOR * int(n) * act_bytes
        worst = max(worst, int(n) * act_bytes + extra)
    return worst


def vae_tile(latent_h: int, latent_w: int, *, batch: int, bytes_per_latent_px: int, halo: int, available: int,
             min_tile: int = 16, margin: float = 1.25) -> "int | None":
    """Tile edge (latent pixels, multiple of 8) for the exact tiled VAE decode, or None if untiled fits.

    ``bytes_per_latent_px``: peak activation bytes per latent pixel of an untiled decode; a tile
    of edge ``t`` holds ``(t + 2·halo)²`` latent pixels of activations at a time.
    """
    if min(latent_h, latent_w, batch) < 1:
        raise ValueError("latent size and batch must be >= 1")
    per = batch * bytes_per_latent_px * margin
    if latent_h * latent_w * per <= available:
        return None
    side = int((max(available, 0) / per) ** 0.5) - 2 * halo
    tile = max(min_tile, (side // 8) * 8)
    return min(tile, max(latent_h, latent_w))


def plan_text_encoder(te_bytes: int, available: int, activation: int,
                      constants: ComfyMemoryConstants = ComfyMemoryConstants()) -> str:
    """Where the text encoder runs for one encode:

    * ``"device"`` — the whole encoder plus its activations fit: loaded whole (``force_full_load``);
    * ``"partial"`` — it does not fit: ComfyUI loads what fits and streams the other layers
      (every layer of the encoder is a ``comfy.ops``-style layer), as for the DiTs;
    * ``"cpu"`` — the compute device is the CPU, or not even the activation reserve is free.

    After encoding ComfyUI evicts it as soon as the DiTs need the memory.
    """
    if constants.vram_state == "disabled":
        return "cpu"
    if constants.vram_state in ("high", "shared"):
        return "device"
    reserve = max(constants.minimum_inference, activation + constants.extra_reserved)
    if te_bytes + reserve <= available:
        return "device"
    return "partial" if available >= reserve else "cpu"
