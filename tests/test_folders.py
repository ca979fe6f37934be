"""Model folder listing: sharded checkpoints are one entry, bare diffusers transformer folders and GGUF
files are listed, and a diffusers config.json that is not Ideogram 4's is an error naming the field."""

from __future__ import annotations

import importlib
import json
import re
import sys
import types

import pytest
import torch

from comfy_api_stub import stubbed_pack
from model import load_transformer
from tools.make_test_checkpoints import convert, write_file, write_sharded


@pytest.fixture(scope="module")
def folders():
    """``nodes.host.folders`` imported as part of the pack (it reads the checkpoint names from ``model``)."""
    with stubbed_pack() as pack:
        yield importlib.import_module(f"{pack.__name__}.nodes.host.folders")


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """A fake ``folder_paths`` whose diffusion_models key is tmp_path/diffusion_models."""
    root = tmp_path / "diffusion_models"
    root.mkdir()
    fp = types.ModuleType("folder_paths")
    fp.folder_names_and_paths = {"diffusion_models": ([str(root)], {".safetensors", ".sft"})}
    fp.get_folder_paths = lambda key: list(fp.folder_names_and_paths[key][0])

    def get_filename_list(key):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")  # ComfyUI's supported extensions
                      if p.suffix in (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".pkl"))

    fp.get_filename_list = get_filename_list
    # ComfyUI's get_full_path: None unless the name is a file (a symbolic link to nothing is not)
    fp.get_full_path = lambda key, name: str(root / name) if (root / name).is_file() else None
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    return root


def test_sharded_checkpoint_is_one_entry_and_bare_transformer_folders_are_listed(folders, models_dir, tiny_weights):
    tensors = convert(tiny_weights[0], "bf16")
    write_file(tensors, models_dir / "ideogram4_bf16.safetensors", "bf16")
    write_sharded(tensors, models_dir / "sharded", "bf16", shards=3, stem="ideogram4")
    (models_dir / "ideogram4-Q4_K.gguf").write_bytes(b"GGUF")
    bare = models_dir / "ideogram4_transformer"
    write_sharded(tensors, bare, "bf16", shards=2)
    (bare / "config.json").write_text(json.dumps({"_class_name": "Ideogram4Transformer2DModel"}))
    listed = folders.list_folders("transformer", ["diffusion_models"])
    assert listed == ["ideogram4_transformer/"]
    files = folders.list_files("diffusion_models", folders.DIT_EXTENSIONS, hide_under=listed)
    assert files == ["ideogram4-Q4_K.gguf", "ideogram4_bf16.safetensors", "sharded/ideogram4.safetensors.index.json"]
    # the loader's plain-safetensors view still hides nothing it should not
    assert "sharded/ideogram4-00001-of-00003.safetensors" in folders.list_files("diffusion_models")
    # the index entry loads like the single file
    a = load_transformer(models_dir / files[2]).state_dict()
    b = load_transformer(models_dir / files[1]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _bare_folder(tmp_path, tiny_weights, config):
    folder = tmp_path / "transformer"
    write_file(convert(tiny_weights[0], "diffusers"), folder / "diffusion_pytorch_model.safetensors", "diffusers")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_diffusers_config_must_be_ideogram4s(tmp_path, tiny_weights, tiny_cfg):
    good = {"_class_name": "Ideogram4Transformer2DModel", "in_channels": 128, "num_layers": tiny_cfg.num_layers,
            "attention_head_dim": tiny_cfg.head_dim, "num_attention_heads": tiny_cfg.num_heads,
            "intermediate_size": tiny_cfg.intermediate_size, "adaln_dim": tiny_cfg.adaln_dim,
            "llm_features_dim": tiny_cfg.llm_features_dim, "rope_theta": 5000000, "mrope_section": [24, 20, 20],
            "norm_eps": 1e-5}
    model = load_transformer(_bare_folder(tmp_path / "ok", tiny_weights, good))
    assert model.config.num_layers == tiny_cfg.num_layers
    for field, value in (("rope_theta", 10000), ("mrope_section", [16, 24, 24]), ("num_layers", 34)):
        bad = dict(good, **{field: value})
        with pytest.raises(ValueError, match=rf"config\.json: {field} = {value!r}".replace("[", r"\[")):
            load_transformer(_bare_folder(tmp_path / field, tiny_weights, bad))
    extra = dict(good, some_future_field=1)
    model = load_transformer(_bare_folder(tmp_path / "extra", tiny_weights, extra))
    assert "config.json fields not used: some_future_field" in model.checkpoint_format
    # diffusers writes a quantization_config for a bitsandbytes model: used when it describes the weights
    bnb = dict(good, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True,
                                          "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"})
    folder = tmp_path / "nf4"
    write_file(convert(tiny_weights[0], "nf4"), folder / "diffusion_pytorch_model.safetensors", "nf4")
    (folder / "config.json").write_text(json.dumps(bnb))
    assert load_transformer(folder).checkpoint_format == "bitsandbytes nf4, official key names"
    model = load_transformer(_bare_folder(tmp_path / "bnb_on_bf16", tiny_weights, bnb))
    assert model.checkpoint_format.endswith("config.json fields not used: quantization_config (nf4; the weights "
                                            "are not quantised, read as they are)"), model.checkpoint_format


def test_diffusers_variant_saves_are_one_entry_and_load(folders, models_dir, tiny_weights):
    """``save_pretrained(variant="bf16")`` names: a folder with config.json is listed as ``name/``; a variant index
    without one is listed once, its shards hidden; both load like the plain file."""
    tensors = convert(tiny_weights[0], "diffusers")
    folder = models_dir / "i4_variant"
    write_sharded(tensors, folder, "diffusers", shards=2, variant="bf16")
    (folder / "config.json").write_text(json.dumps({"_class_name": "Ideogram4Transformer2DModel"}))
    flat = write_sharded(tensors, models_dir / "flat", "diffusers", shards=2, variant="fp16")
    single = models_dir / "single"
    write_file(tensors, single / "diffusion_pytorch_model.bf16.safetensors", "diffusers")
    (single / "config.json").write_text(json.dumps({"_class_name": "Ideogram4Transformer2DModel"}))
    listed = folders.list_folders("transformer", ["diffusion_models"])
    assert listed == ["i4_variant/", "single/"]
    files = folders.list_files("diffusion_models", folders.DIT_EXTENSIONS, hide_under=listed)
    assert files == ["flat/diffusion_pytorch_model.safetensors.index.fp16.json"]
    want = load_transformer(write_file(tensors, models_dir / "plain.safetensors", "diffusers")).state_dict()
    for source in (folder, flat, single):
        got = load_transformer(source).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), source


def test_a_shard_alone_several_variants_and_a_dangling_link_are_explained(folders, models_dir, tiny_weights):
    tensors = convert(tiny_weights[0], "bf16")
    write_sharded(tensors, models_dir / "sharded", "bf16", shards=2, stem="ideogram4")
    with pytest.raises(ValueError, match=r"shard 1 of 2 of a sharded checkpoint.*pick its index "
                                         r"\(ideogram4.safetensors.index.json\)"):
        load_transformer(models_dir / "sharded" / "ideogram4-00001-of-00002.safetensors")
    both = models_dir / "both"
    for variant in ("bf16", "fp16"):
        write_file(tensors, both / f"diffusion_pytorch_model.{variant}.safetensors", "bf16")
    (both / "config.json").write_text("{}")
    assert "both/" in folders.list_folders("transformer", ["diffusion_models"])  # listed; loading says why not
    with pytest.raises(ValueError, match=r"several variants of diffusion_pytorch_model \(bf16, fp16\); keep one"):
        load_transformer(both)
    sft = write_file(tensors, models_dir / "ideogram4.sft", "bf16")  # ComfyUI lists .sft as safetensors: it loads
    assert load_transformer(sft).checkpoint_format == "bfloat16, official key names"
    (models_dir / "gone.safetensors").symlink_to(models_dir / "does_not_exist.safetensors")
    assert "gone.safetensors" not in folders.list_files("diffusion_models", folders.DIT_EXTENSIONS)
    with pytest.raises(ValueError, match="a symbolic link to a file that does not exist"):
        load_transformer(models_dir / "gone.safetensors")


def test_a_pickle_checkpoint_is_left_out_and_said_once(folders, models_dir, caplog):
    """ComfyUI lists .pt / .ckpt files; the pack's loaders never unpickle, so they are not in the combo — and the log
    says so (once), instead of the file silently missing from the list."""
    (models_dir / "ideogram4_model.pt").write_bytes(b"\x80\x02}q\x00.")  # a pickle, never opened
    caplog.set_level("WARNING", logger="ideogram4_native")
    for _ in range(2):
        assert "ideogram4_model.pt" not in folders.list_files("diffusion_models", folders.DIT_EXTENSIONS)
    said = [r.getMessage() for r in caplog.records if "ideogram4_model.pt" in r.getMessage()]
    assert len(said) == 1 and "pickle checkpoint, not listed" in said[0] and ".safetensors" in said[0], said


def test_hidden_folders_are_skipped_and_a_folder_in_two_bases_is_one_entry(folders, models_dir, tiny_weights):
    """``.cache/`` (a hub download cache, say) is neither a model folder nor searched for .gguf / index files; ``i4/``
    under both ``diffusion_models`` and ``unet`` is listed once."""
    tensors = convert(tiny_weights[0], "bf16")
    unet = models_dir.parent / "unet"
    sys.modules["folder_paths"].folder_names_and_paths["unet"] = ([str(unet)], {".safetensors"})
    for folder in (models_dir / "i4", unet / "i4", models_dir / ".cache"):
        write_file(tensors, folder / "diffusion_pytorch_model.safetensors", "bf16")
        (folder / "config.json").write_text(json.dumps({"_class_name": "Ideogram4Transformer2DModel"}))
    (models_dir / ".cache" / "ideogram4-Q8_0.gguf").write_bytes(b"GGUF")
    write_sharded(tensors, models_dir / ".cache" / "sharded", "bf16", stem="ideogram4")
    (models_dir / "ideogram4-Q4_K.gguf").write_bytes(b"GGUF")
    assert folders.list_folders("transformer", ["diffusion_models", "unet"]) == ["i4/"]
    files = folders.list_files("diffusion_models", (".gguf", folders.INDEX_SUFFIX), hide_under=["i4/"])
    assert files == ["ideogram4-Q4_K.gguf"]


def test_an_unreadable_index_is_listed_and_hides_nothing(folders, models_dir, tiny_weights):
    """Its own error comes when it is loaded; the listing neither fails nor hides a file for it."""
    write_file(convert(tiny_weights[0], "bf16"), models_dir / "ideogram4_bf16.safetensors", "bf16")
    (models_dir / "cut.safetensors.index.json").write_text('{"weight_map": {"input_proj.weight": "ideogram4_bf')
    (models_dir / "list.safetensors.index.json").write_text('{"weight_map": ["ideogram4_bf16.safetensors"]}')
    assert folders.list_files("diffusion_models", folders.DIT_EXTENSIONS) == [
        "cut.safetensors.index.json", "ideogram4_bf16.safetensors", "list.safetensors.index.json"]
    for name, problem in (("cut.safetensors.index.json", "not a safetensors index (needs a 'weight_map')"),
                          ("list.safetensors.index.json", "not a safetensors index: its 'weight_map' must map each "
                                                          "tensor name to a shard file name, got list")):
        with pytest.raises(ValueError, match=re.escape(f"{models_dir / name}: {problem}")):
            load_transformer(models_dir / name)
