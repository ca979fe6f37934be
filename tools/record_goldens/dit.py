"""``dit_golden.safetensors``: the reference DiT's forwards and full sampling runs (tests/test_dit_parity.py).

The reference ``Ideogram4Transformer`` on ``tools.make_test_checkpoints.random_state_dict(tiny_config(), seed)``
(seed 0 conditional, seed 1 unconditional), loaded with ``load_state_dict`` + ``.to(dtype)`` as the reference's
``_build_transformer`` does, and ``Ideogram4Pipeline.__call__`` with tokenisation, text encoding and decoding
stubbed out; packed inputs (positions, segments, indicators) come from the reference's own ``_build_inputs``.
Keys ``<fp32|bf16>.{cond,uncond,padded,sample.<preset>}`` (bf16 samples: Turbo 12 only) and
``fp32.sample.batch2.V4_TURBO_12``.
"""

from __future__ import annotations

import torch

from .common import reference_module

FILENAME = "dit_golden.safetensors"
T_SINGLE = 0.8989259
T_PADDED = (0.3, 0.7)
FWD_GRID = (3, 5)          # (grid_h, grid_w) token grid of the forward cases
SAMPLE_HW = (256, 384)     # (height, width) px -> 16 x 24 tokens
SAMPLE_SEED = 1234


def record() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    modeling = reference_module("modeling_ideogram4", "the DiT golden")
    pipeline = reference_module("pipeline_ideogram4", "the DiT golden")
    PRESETS = reference_module("sampler_configs", "the DiT golden").PRESETS
    get_latent_norm = reference_module("latent_norm", "the DiT golden").get_latent_norm
    from tools.make_test_checkpoints import parity_inputs as _inputs, random_state_dict, tiny_config

    cfg = tiny_config()
    rcfg = modeling.Ideogram4Config(
        emb_dim=cfg.emb_dim, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size, adanln_dim=cfg.adaln_dim, in_channels=cfg.in_channels,
        llm_features_dim=cfg.llm_features_dim, rope_theta=int(cfg.rope_theta),
        mrope_section=tuple(cfg.mrope_section), norm_eps=cfg.norm_eps)
    feat_dim = cfg.llm_features_dim
    weights = {"cond": random_state_dict(cfg, 0), "uncond": random_state_dict(cfg, 1)}

    def build(which: str, dtype: torch.dtype):
        # == pipeline_ideogram4._build_transformer for a plain (unquantised) state dict
        m = modeling.Ideogram4Transformer(rcfg)
        m.load_state_dict(weights[which])
        m.to(device=torch.device("cpu"), dtype=dtype)
        return m.eval()

    def make_pipeline(cond, uncond, dtype, lengths: list[int], feats: torch.Tensor):
        """Bare reference pipeline; tokenise/encode/decode/verify stubbed."""
        p = object.__new__(pipeline.Ideogram4Pipeline)
        p.conditional_transformer, p.unconditional_transformer = cond, uncond
        p.text_encoder = p.text_tokenizer = p.autoencoder = None
        p.config = pipeline.Ideogram4PipelineConfig()
        p.device, p.dtype = torch.device("cpu"), dtype
        p.latent_shift, p.latent_scale = get_latent_norm()
        n_of = {f"prompt{i}": n for i, n in enumerate(lengths)}
        p._verify_prompts = lambda prompts, raise_on_issues=True: None
        p._tokenize = lambda prompt: (torch.zeros(n_of[prompt], dtype=torch.long), n_of[prompt])

        def encode_text(token_ids, text_position_ids, indicator):
            # like the real _encode_text: (B, L_total, F) float32, zero outside LLM-token positions
            b, l_total = token_ids.shape
            full = torch.zeros(b, l_total, feats.shape[-1], dtype=torch.float32)
            full[:, : feats.shape[1]] = feats
            return full

        p._encode_text = encode_text
        p._decode = lambda z, grid_h, grid_w: z  # latents in model space (before scale/shift)
        return p, list(n_of)

    pcfg = pipeline.Ideogram4PipelineConfig()
    patch = pcfg.patch_size * pcfg.ae_scale_factor
    h_px, w_px = FWD_GRID[0] * patch, FWD_GRID[1] * patch
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            cond, uncond = build("cond", dtype), build("uncond", dtype)

            # conditional forward, one caption of 7 tokens
            feats, x = _inputs(10, [7], 15, feat_dim)
            p, prompts = make_pipeline(cond, uncond, dtype, [7], feats)
            inp = p._build_inputs(prompts, height=h_px, width=w_px)
            lt = inp["max_text_tokens"]
            llm = torch.cat([feats, torch.zeros(1, 15, feat_dim)], 1)
            xz = torch.cat([torch.zeros(1, lt, 128), x], 1)
            o = cond(llm_features=llm, x=xz, t=torch.tensor([T_SINGLE]), position_ids=inp["position_ids"],
                     segment_ids=inp["segment_ids"], indicator=inp["indicator"])
            out[f"{name}.cond"] = o[:, lt:].contiguous()

            # image-only unconditional forward (the pipeline's negative branch)
            o = uncond(llm_features=torch.zeros(1, 15, feat_dim), x=x, t=torch.tensor([T_SINGLE]),
                       position_ids=inp["position_ids"][:, lt:], segment_ids=inp["segment_ids"][:, lt:],
                       indicator=inp["indicator"][:, lt:])
            out[f"{name}.uncond"] = o.contiguous()

            # left-padded batch of two captions (7 and 4 tokens)
            feats, x = _inputs(11, [7, 4], 15, feat_dim)
            p, prompts = make_pipeline(cond, uncond, dtype, [7, 4], feats)
            inp = p._build_inputs(prompts, height=h_px, width=w_px)
            lt = inp["max_text_tokens"]
            llm = torch.cat([feats, torch.zeros(2, 15, feat_dim)], 1)
            xz = torch.cat([torch.zeros(2, lt, 128), x], 1)
            o = cond(llm_features=llm, x=xz, t=torch.tensor(T_PADDED), position_ids=inp["position_ids"],
                     segment_ids=inp["segment_ids"], indicator=inp["indicator"])
            out[f"{name}.padded"] = o[:, lt:].contiguous()

            # full sampling runs through Ideogram4Pipeline.__call__
            def run(preset: str, feat_seed: int, lengths: list[int], seed: int) -> torch.Tensor:
                feats, _ = _inputs(feat_seed, lengths, 1, feat_dim)
                p, prompts = make_pipeline(cond, uncond, dtype, lengths, feats)
                sp = PRESETS[preset]
                z = p(prompts, height=SAMPLE_HW[0], width=SAMPLE_HW[1], num_steps=sp.num_steps,
                      guidance_schedule=sp.guidance_schedule, mu=sp.mu, std=sp.std, seed=seed)
                assert z.dtype == torch.float32
                return z.contiguous()

            for preset in (list(PRESETS) if name == "fp32" else ["V4_TURBO_12"]):
                out[f"{name}.sample.{preset}"] = run(preset, 12, [9], SAMPLE_SEED)
                print(f"  dit: {name}.sample.{preset}", flush=True)
            if name == "fp32":
                out["fp32.sample.batch2.V4_TURBO_12"] = run("V4_TURBO_12", 13, [9, 5], 99)
    return out, {}
