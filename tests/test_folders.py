"""Model folder listing: sharded checkpoints are one entry, bare diffusers transformer folders and GGUF
files are listed, and a diffusers config.json that is not Ideogram 4's is an error naming the field."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from model import load_transformer
from nodes.host import folders
from tools.make_test_checkpoints import convert, write_file, write_sharded


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """A fake ``folder_paths`` whose diffusion_models key is tmp_path/diffusion_models."""
    root = tmp_path / "diffusion_models"
    root.mkdir()
    fp = types.ModuleType("folder_paths")
    fp.folder_names_and_paths = {"diffusion_models": ([str(root)], {".safetensors", ".sft"})}
    fp.get_folder_paths = lambda key: list(fp.folder_names_and_paths[key][0])

    def get_filename_list(key):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".safetensors", ".sft"))

    fp.get_filename_list = get_filename_list
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    return root


def test_sharded_checkpoint_is_one_entry_and_bare_transformer_folders_are_listed(models_dir, tiny_weights):
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
