"""The DiT-pair memory policy (nodes/memory_policy.py) on simulated cards — pure, no ComfyUI, no GPU.

Sizes are the real checkpoints' (spec §2.9/§2.10/§8.1): Comfy-Org fp8_scaled 9,280,741,285 /
9,280,741,293 B, bf16 18,558,576,896 B per DiT, nf4 ≈ 5.22 GB per DiT.  Activation reserves come
from ``activation_bytes`` with the full 9.3 B configuration.
"""

from __future__ import annotations

import itertools

import pytest

from nodes.host.memory_policy import (GiB, MiB, ComfyMemoryConstants, ModelSize, activation_bytes, comfy_budget,
                                      decode_temp_bytes,
                                 plan_memory, plan_text_encoder, vae_tile)
from nodes.host import memory_policy as mp

FP8 = (9_280_741_285, 9_280_741_293)
BF16 = (18_558_576_896, 18_558_576_896)
NF4 = (5_221_550_336, 5_221_550_336)
FULL = dict(emb_dim=4608, intermediate=12288, num_heads=18, llm_features_dim=53248)
NVIDIA = ComfyMemoryConstants()
OTHER_GPU = ComfyMemoryConstants(min_weight_ratio=0.4)


def pair(sizes):
    return [ModelSize("conditional", sizes[0]), ModelSize("unconditional", sizes[1])]


def act_1024(dequant=245_366_784 * 4):
    return activation_bytes(1, 4096, 512, **FULL, dequant_bytes=dequant)


def test_activation_estimate_is_in_the_expected_range():
    a = act_1024()
    # MLP phase 4608 tokens × (3·4608 + 4·12288) × 2 B ≈ 0.58 GB, text 512 × 53248 × 12 ≈ 0.33 GB,
    # fp8 decode of llm_cond_proj ≈ 0.98 GB; ×1.25 + 64 MiB.
    assert 2.0 * GiB < a < 3.0 * GiB
    assert activation_bytes(2, 4096, 512, **FULL) > activation_bytes(1, 4096, 512, **FULL)
    # a batch of captions may be padded: its (B, 1, L, L) mask (bool kept + SDPA's per-call bf16 copy) is counted
    # (the estimate is int(1.25 · peak) + 64 MiB with peak = B · per-image + mask: the mask term is what a batch of
    # two adds beyond two single images)
    L = 4096 + 512
    one, two = activation_bytes(1, 4096, 512, **FULL), activation_bytes(2, 4096, 512, **FULL)
    assert abs((two - 2 * one + 64 * 2 ** 20) / 1.25 - 2 * L * L * (2 + 1)) < 4
    image_only_one, image_only_two = activation_bytes(1, 4096, 0, **FULL), activation_bytes(2, 4096, 0, **FULL)
    assert abs((image_only_two - 2 * image_only_one + 64 * 2 ** 20) / 1.25) < 4  # no text, no mask
    assert activation_bytes(1, 16384, 512, **FULL) > 3 * activation_bytes(1, 4096, 512, **FULL) / 2
    no_flash = activation_bytes(1, 4096, 512, **FULL, flash_attention=False)
    assert no_flash - activation_bytes(1, 4096, 512, **FULL) >= 2 * 18 * 4608 ** 2 * 2  # the score matrix
    with pytest.raises(ValueError):
        activation_bytes(0, 4096, 0, **FULL)


@pytest.mark.parametrize("name,sizes,card_gib,mode", [
    ("H100 80GB bf16", BF16, 79.0, "resident"),
    ("H200 141GB bf16", BF16, 139.0, "resident"),
    ("48GB bf16", BF16, 47.0, "resident"),
    ("40GB bf16", BF16, 39.0, "resident"),
    ("36GB bf16", BF16, 35.0, "partial"),
    ("24GB fp8: fits once the text encoder is evicted", FP8, 22.5, "resident"),
    ("20GB fp8", FP8, 19.0, "partial"),
    ("32GB fp8", FP8, 31.0, "resident"),
    ("16GB nf4", NF4, 15.0, "resident"),
    ("12GB nf4", NF4, 11.0, "partial"),
    ("8GB fp8", FP8, 7.5, "partial"),
    ("2GB fp8", FP8, 2.0, "stream"),
])
def test_simulated_cards(name, sizes, card_gib, mode):
    plan = plan_memory(pair(sizes), int(card_gib * GiB), act_1024(), NVIDIA)
    assert plan.mode == mode, plan.summary()
    assert plan.load_order == ("unconditional", "conditional")
    total = sum(sizes)
    if mode == "resident":
        assert plan.force_full_load and plan.streamed_per_step == 0
        assert total + plan.reserve <= plan.available
    else:
        assert not plan.force_full_load
        assert plan.streamed_per_step == total - plan.weights_resident > 0
        assert plan.weights_resident + plan.reserve <= plan.available or plan.weights_resident == 0
    assert plan.memory_required == plan.minimum_memory_required == act_1024()
    assert mode in plan.summary().splitlines()[0]


def test_partial_fills_the_unconditional_model_first_and_streams_only_the_rest():
    avail = 19 * GiB
    plan = plan_memory(pair(FP8), avail, act_1024(), NVIDIA)
    budget = avail - plan.reserve
    assert plan.resident["unconditional"] == FP8[1]  # fully resident
    assert plan.resident["conditional"] == budget - FP8[1]  # the rest of the budget
    assert plan.streamed_per_step == sum(FP8) - budget
    assert "streamed per step" in plan.summary()


def test_both_partially_loaded_when_neither_fits_alone():
    plan = plan_memory(pair(FP8), 8 * GiB, act_1024(), NVIDIA)
    assert 0 < plan.resident["unconditional"] < FP8[1]
    assert plan.resident["conditional"] == 0
    assert plan.weights_resident == 8 * GiB - plan.reserve


def test_reserve_follows_comfyui_min_req():
    small = plan_memory(pair(NF4), 40 * GiB, 10 * MiB, NVIDIA)
    assert small.reserve == NVIDIA.minimum_inference  # never below ComfyUI's minimum inference memory
    big = plan_memory(pair(NF4), 40 * GiB, 5 * GiB, NVIDIA)
    assert big.reserve == 5 * GiB + NVIDIA.extra_reserved


def test_non_nvidia_weight_ratio_mirrors_comfyui():
    avail = 10 * GiB
    act = 6 * GiB  # large reserve: ComfyUI still grants min(free·0.4, free − minimum_inference) to weights
    plan = plan_memory(pair(FP8), avail, act, OTHER_GPU)
    first = comfy_budget(avail, plan.reserve, OTHER_GPU)
    assert first == int(avail * 0.4)
    assert plan.resident["unconditional"] == first
    assert plan.resident["conditional"] == comfy_budget(avail - first, plan.reserve, OTHER_GPU)
    # a small free amount: the ratio's share is capped at free − minimum_inference (ComfyUI 0.33's min(...))
    free = int(1.5 * GiB)
    assert comfy_budget(free, 3 * GiB, OTHER_GPU) == free - OTHER_GPU.minimum_inference < int(free * 0.4)


@pytest.mark.parametrize("state,mode", [("disabled", "cpu"), ("no", "stream"), ("high", "resident"),
                                        ("shared", "resident")])
def test_vram_states(state, mode):
    c = ComfyMemoryConstants(vram_state=state)
    plan = plan_memory(pair(BF16), 24 * GiB, act_1024(), c)
    assert plan.mode == mode
    if state == "disabled":
        assert plan.streamed_per_step == 0 and "cpu" in plan.summary()
    if state == "high":
        assert "out-of-memory" in plan.summary()  # does not fit, but --highvram forces it
        # the weights alone fit but not with the activation reserve: still out-of-memory, said so
        tight = plan_memory(pair(BF16), sum(BF16) + plan.reserve - 1, act_1024(), c)
        assert tight.mode == "resident" and "out-of-memory" in tight.summary()
        assert plan_memory(pair(BF16), sum(BF16) + plan.reserve, act_1024(), c).notes == ()
    if state == "no":
        assert plan.streamed_per_step == sum(BF16)


def test_invariants_over_a_grid():
    acts = [0, 512 * MiB, act_1024(), 8 * GiB]
    cards = [int(g * GiB) for g in (0, 1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 141)]
    for sizes, act, constants in itertools.product((FP8, BF16, NF4, (7 * GiB, 3 * GiB)), acts, (NVIDIA, OTHER_GPU)):
        prev_streamed = None
        for avail in cards:
            plan = plan_memory(pair(sizes), avail, act, constants)
            for name, total in zip(("conditional", "unconditional"), sizes):
                assert 0 <= plan.resident[name] <= total
            assert plan.streamed_per_step == sum(sizes) - plan.weights_resident
            assert (plan.mode == "resident") == (plan.streamed_per_step == 0)
            if constants.min_weight_ratio == 0.0 and plan.mode != "resident":
                # correct by construction: weights never eat the activation reserve
                assert plan.weights_resident <= max(0, avail - plan.reserve)
            if prev_streamed is not None:
                assert plan.streamed_per_step <= prev_streamed  # more memory never streams more
            prev_streamed = plan.streamed_per_step


def test_a_sliver_of_weights_on_the_device_is_partial_not_stream():
    plan = plan_memory(pair(FP8), 512 + NVIDIA.minimum_inference, 0, NVIDIA)
    assert plan.mode == "partial" and plan.weights_resident == 512
    one = plan_memory(pair(FP8), 1 + NVIDIA.minimum_inference, 0, NVIDIA)
    assert one.mode == "partial" and one.weights_resident == 1  # one byte resident is still partial
    assert plan_memory(pair(FP8), NVIDIA.minimum_inference, 0, NVIDIA).mode == "stream"


def test_already_loaded_parts_count_as_available():
    # available = free + evictable (the callers count a resident pair in it): it plans as resident again
    plan = plan_memory(pair(FP8), sum(FP8) + 4 * GiB, act_1024(), NVIDIA)
    assert plan.mode == "resident"


def test_an_exact_fit_is_resident_and_its_summary_streams_nothing():
    reserve = plan_memory(pair(FP8), 0, act_1024(), NVIDIA).reserve
    plan = plan_memory(pair(FP8), sum(FP8) + reserve, act_1024(), NVIDIA)
    assert plan.mode == "resident" and plan.force_full_load and plan.streamed_per_step == 0
    assert "streamed per step" not in plan.summary()
    assert plan_memory(pair(FP8), sum(FP8) + reserve - 1, act_1024(), NVIDIA).mode == "partial"


def test_bad_arguments():
    with pytest.raises(ValueError):
        plan_memory([], GiB, 0)
    with pytest.raises(ValueError):
        plan_memory(pair(FP8), -1, 0)
    with pytest.raises(ValueError, match="available and activation must be >= 0"):
        plan_memory(pair(FP8), GiB, -1)
    with pytest.raises(ValueError):
        ComfyMemoryConstants(vram_state="medium")


def test_text_encoder_plan():
    te_fp8 = 10_588_637_512
    assert plan_text_encoder(te_fp8, 23 * GiB, GiB, NVIDIA) == "device"
    assert plan_text_encoder(te_fp8, 10 * GiB, GiB, NVIDIA) == "partial"  # streamed like the DiTs
    reserve = GiB + NVIDIA.extra_reserved
    assert plan_text_encoder(te_fp8, reserve, GiB, NVIDIA) == "partial"
    assert plan_text_encoder(te_fp8, reserve - 1, GiB, NVIDIA) == "cpu"  # not even the activations fit
    assert plan_text_encoder(te_fp8, te_fp8 + reserve, GiB, NVIDIA) == "device"
    assert plan_text_encoder(te_fp8, 80 * GiB, GiB, ComfyMemoryConstants(vram_state="disabled")) == "cpu"
    assert plan_text_encoder(te_fp8, GiB, GiB, ComfyMemoryConstants(vram_state="high")) == "device"
    assert plan_text_encoder(te_fp8, GiB, GiB, ComfyMemoryConstants(vram_state="shared")) == "device"
    # a small activation: the reserve is ComfyUI's minimum inference memory, not activation + extra_reserved
    small = MiB
    assert plan_text_encoder(te_fp8, te_fp8 + small + NVIDIA.extra_reserved, small, NVIDIA) == "partial"
    assert plan_text_encoder(te_fp8, te_fp8 + NVIDIA.minimum_inference, small, NVIDIA) == "device"


def test_vae_tile():
    per = 1000  # bytes per latent pixel
    assert vae_tile(128, 128, batch=1, bytes_per_latent_px=per, halo=8, available=10 ** 9) is None
    tile = vae_tile(256, 256, batch=1, bytes_per_latent_px=per, halo=8, available=8 * 10 ** 6)
    assert tile is not None and tile % 8 == 0 and tile >= 16
    assert (tile + 16) ** 2 * per * 1.25 <= 8 * 10 ** 6
    assert vae_tile(256, 256, batch=1, bytes_per_latent_px=per, halo=8, available=0) == 16
    assert vae_tile(20, 20, batch=4, bytes_per_latent_px=per, halo=8, available=1) == 16
    assert vae_tile(8, 12, batch=1, bytes_per_latent_px=per, halo=8, available=1) == 12  # never above the latent
    # side = √(9e6 / 1250) − 16 = 68.8…: rounded down to a multiple of 8
    assert vae_tile(256, 256, batch=1, bytes_per_latent_px=per, halo=8, available=9 * 10 ** 6) == 64
    exact = 128 * 128 * per * 1.25  # the untiled decode exactly fits: no tiling
    assert vae_tile(128, 128, batch=1, bytes_per_latent_px=per, halo=8, available=int(exact)) is None
    assert vae_tile(128, 128, batch=1, bytes_per_latent_px=per, halo=8, available=int(exact) - 1) is not None
    for bad in (dict(latent_h=0, latent_w=8, batch=1), dict(latent_h=8, latent_w=8, batch=0)):
        with pytest.raises(ValueError, match="latent size and batch must be >= 1"):
            vae_tile(**bad, bytes_per_latent_px=per, halo=8, available=1)


# ----------------------------------------------------------------------------------- system RAM

def _plan(mode_state: str, available: int):
    models = [mp.ModelSize("conditional", 9 * GiB), mp.ModelSize("unconditional", 9 * GiB)]
    return mp.plan_memory(models, available, 2 * GiB, mp.ComfyMemoryConstants(vram_state=mode_state))


def test_ram_budget_on_the_cpu_reads_every_weight_and_counts_activations():
    plan = mp.ram_budget(_plan("disabled", 64 * GiB), total=64 * GiB, available=40 * GiB, private_weights=1 * GiB,
                         file_backed={"conditional": 9 * GiB, "unconditional": 9 * GiB}, activation_cpu=2 * GiB)
    assert plan.mode == "cpu" and plan.ram.private == 3 * GiB and plan.ram.mapped == 18 * GiB
    assert plan.ram.fits and plan.ram.warnings() == ()
    assert "system RAM: 3.00 GiB private + 18.00 GiB file-backed (droppable) of 40.00 GiB available" in plan.summary()


def test_ram_budget_on_a_device_reads_only_the_streamed_part():
    plan = mp.ram_budget(_plan("normal", 12 * GiB), total=32 * GiB, available=20 * GiB, private_weights=0,
                         file_backed={"conditional": 9 * GiB, "unconditional": 9 * GiB})
    assert plan.mode == "partial"
    assert plan.ram.mapped == plan.streamed_per_step > 0 and plan.ram.private == 0


def test_ram_budget_warns_before_a_load_that_cannot_fit():
    plan = mp.ram_budget(_plan("disabled", 16 * GiB), total=16 * GiB, available=6 * GiB, private_weights=5 * GiB,
                         file_backed={"conditional": 9 * GiB}, activation_cpu=2 * GiB)
    assert not plan.ram.fits
    (warning,) = plan.ram.warnings()
    assert warning.startswith("WARNING: this run needs 7.00 GiB of private system RAM and only 6.00 GiB")
    assert warning in plan.summary()
    short = mp.ram_budget(_plan("disabled", 16 * GiB), total=16 * GiB, available=10 * GiB, private_weights=0,
                          file_backed={"conditional": 9 * GiB}, activation_cpu=2 * GiB)
    assert short.ram.fits and "re-read from disk" in short.ram.warnings()[0]
    exact = mp.ram_budget(_plan("disabled", 16 * GiB), total=16 * GiB, available=7 * GiB, private_weights=5 * GiB,
                          file_backed={}, activation_cpu=2 * GiB)
    assert exact.ram.fits and exact.ram.warnings() == ()  # private == available still fits


def _full_size_linears_by_stage() -> tuple[list, list]:
    """(block-stage, text-stage) weight counts of the full-size DiT's Linears (text stage: the text projection)."""
    import torch

    from model.dit import TEXT_PROJECTION_MODULES, Ideogram4DiT
    from model.dit.config import DiTConfig

    with torch.device("meta"):
        dit = Ideogram4DiT(DiTConfig())
    text = {id(m) for name in TEXT_PROJECTION_MODULES for m in getattr(dit, name).modules()}
    stages = ([], [])
    for m in dit.modules():
        if isinstance(m, torch.nn.Linear):
            stages[id(m) in text].append(m.in_features * m.out_features)
    return stages


def _full_size_linears():
    blocks, text = _full_size_linears_by_stage()
    return blocks + text


@pytest.mark.parametrize("kernel", [True, False])
def test_16gb_card_holds_both_nf4_models_with_the_honest_decode_estimate(kernel):
    from model.checkpoints.nf4 import NF4_CHUNK_TEMP_BYTES

    sizes = _full_size_linears()
    assert max(sizes) == 53248 * 4608  # llm_cond_proj
    dq = decode_temp_bytes([("nf4", n) for n in sizes], act_bytes=2, nf4_kernel=kernel,
                           nf4_chunk_temp=NF4_CHUNK_TEMP_BYTES)
    assert dq == max(sizes) * 2 + (0 if kernel else NF4_CHUNK_TEMP_BYTES)  # the bf16 weight (+ chunk temporaries)
    # even with the text projection's decode counted in the block stage (one worst figure), the pair is resident
    plan = plan_memory(pair(NF4), int(15.0 * GiB), activation_bytes(1, 4096, 512, **FULL, dequant_bytes=dq), NVIDIA)
    assert plan.mode == "resident", plan.summary()
    # the former reserve of 18 B per weight of the largest layer made the same card stream
    old = activation_bytes(1, 4096, 512, **FULL, dequant_bytes=18 * max(sizes))
    assert plan_memory(pair(NF4), int(15.0 * GiB), old, NVIDIA).mode == "partial"


def test_text_projection_decode_and_the_block_peak_do_not_add_up():
    """The text projection runs once, before the blocks: its decode temporary and the features in flight (text
    stage) and the MLP phase with a block layer's decode (block stage) peak at different times."""
    blocks, text = (max(n) * 2 for n in _full_size_linears_by_stage())  # nf4 with the kernel: the bf16 weight
    assert (blocks, text) == (4608 * 3 * 4608 * 2, 53248 * 4608 * 2)  # the fused qkv; llm_cond_proj
    est = activation_bytes(1, 4096, 512, **FULL, dequant_bytes=blocks, text_dequant_bytes=text)
    text_stage = 512 * 53248 * 12 + text  # float32 features cast and normalised + the decoded projection
    block_stage = 4608 * (3 * 4608 + 4 * 12288) * 2 + 512 * 53248 * 4 + blocks  # MLP phase, features held
    io = 6 * 4096 * 128 * 4
    assert est == int((max(text_stage, block_stage) + io) * 1.25) + 64 * MiB
    summed = int((4608 * (3 * 4608 + 4 * 12288) * 2 + 512 * 53248 * 12 + text + io) * 1.25) + 64 * MiB
    assert summed - est > 0.5 * GiB  # what the estimate reserved before (both stages at once)
    # the stage that peaks decides: a smaller text decode leaves the block stage's figure
    assert activation_bytes(1, 4096, 512, **FULL, dequant_bytes=blocks, text_dequant_bytes=0) == \
        int((block_stage + io) * 1.25) + 64 * MiB
    # image-only (the unconditional pass): no text stage at all
    assert activation_bytes(1, 4096, 0, **FULL, dequant_bytes=blocks, text_dequant_bytes=text) == \
        int((4096 * (3 * 4608 + 4 * 12288) * 2 + blocks + io) * 1.25) + 64 * MiB


def test_decode_estimate_per_kind():
    assert decode_temp_bytes([("fp8", 100), ("linear", 50)], act_bytes=2, nf4_kernel=False, nf4_chunk_temp=7) == 200
    assert decode_temp_bytes([("nf4", 10)], act_bytes=4, nf4_kernel=False, nf4_chunk_temp=7) == 47
    assert decode_temp_bytes([("packed", 10)], act_bytes=2, nf4_kernel=False, nf4_chunk_temp=7) == 60
    assert decode_temp_bytes([("compiled", 10)], act_bytes=2, nf4_kernel=False, nf4_chunk_temp=7) == 20
    # a patch merged into the decoded weight on every call: ComfyUI's 2 more weight-sized temporaries
    assert decode_temp_bytes([("fp8", 100, True), ("fp8", 250)], act_bytes=2, nf4_kernel=False, nf4_chunk_temp=7) == 600
    assert decode_temp_bytes([("fp8", 100, False)], act_bytes=2, nf4_kernel=False, nf4_chunk_temp=7) == 200
    with pytest.raises(ValueError, match="int8"):
        decode_temp_bytes([("int8", 1)], act_bytes=2, nf4_kernel=True, nf4_chunk_temp=0)
