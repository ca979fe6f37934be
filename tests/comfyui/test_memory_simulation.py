"""The DiT-pair memory policy under ComfyUI's real model management, on a simulated card.

Runs ``benchmarks/bench_memory_policy.py`` (ComfyUI's ``load_models_gpu`` / ``ModelPatcher.load``
with the CPU presented as a card of a chosen size) and checks what it measured:

* the pair is loaded once per run — the number of loads does not grow with the number of steps
  (no model is evicted and reloaded between the conditional and the unconditional pass);
* the bytes streamed per step equal the weights that are not resident, exactly (each streamed
  layer is copied once per pass, nothing else is moved; the text projection and indicator rows,
  cached per run, only at the first step; on a roomy card the text projection leaves the device after that
  first step), and the plan names the right mode;
* the latent is bit-identical on every card (streaming changes no number);
* loading one model at a time would copy more per step once the pair does not fit;
* the Text Encode node's code loads the text encoder whole on a roomy card and partially on a tight
  one (saying so), with identical features.

Skipped unless ``COMFYUI_PATH`` is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from comfy_harness import COMFYUI_PATH, REPO, requires_comfyui

pytestmark = requires_comfyui()

BUDGETS = (1.5, 0.5, 0.2, 0.0)
MODES = {1.5: "both models resident", 0.5: "partial", 0.2: "partial", 0.0: "stream"}


@pytest.fixture(scope="module", params=["bf16", "nf4"])
def measured(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "result.json"
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    proc = subprocess.run([python, str(REPO / "benchmarks" / "bench_memory_policy.py"), "--comfyui", COMFYUI_PATH,
                           "--format", request.param, "--layers", "3", "--steps", "2,4",
                           "--budgets", ",".join(map(str, BUDGETS)), "--text-encoder", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


def test_plan_modes_follow_the_card(measured):
    for row in measured["cards"]:
        assert MODES[row["budget_fraction"]] in row["plan"], row


def test_pair_is_loaded_once_per_run(measured):
    for row in measured["cards"]:
        assert row["loads_2"] == row["loads_4"] == 2, row  # one load per model, whatever the step count


def test_streamed_bytes_per_step_are_exactly_the_non_resident_weights(measured):
    for row in measured["cards"]:
        assert row["streamed_per_step"] == row["expected_streamed_per_step"], row
        # the plan's figure, up to ComfyUI's whole-layer granularity
        assert abs(row["streamed_per_step"] - row["plan_streamed_per_step"]) <= 2 * measured["largest_layer_bytes"], row
        if row["budget_fraction"] >= 1:
            # everything resident — but the text projection, which left the device after its one use in the run
            assert row["streamed_per_step"] == 0 and row["per_run_streamed_bytes"] > 0, row
            assert sum(row["resident"]) == measured["pair_bytes"] - row["per_run_streamed_bytes"], row
        elif row["budget_fraction"] > 0:
            assert 0 < row["streamed_per_step"] < measured["castable_bytes"], row
        else:
            # everything is streamed, except the layers the DiT runs once per run (its per-run cache)
            assert row["per_run_streamed_bytes"] > 0, row
            assert row["streamed_per_step"] == measured["castable_bytes"] - row["per_run_streamed_bytes"], row


def test_latent_is_identical_on_every_card(measured):
    assert all(row["latent_equal_to_first_card"] for row in measured["cards"])


def test_one_model_at_a_time_copies_more_once_the_pair_does_not_fit(measured):
    row = next(r for r in measured["cards"] if r["budget_fraction"] == 0.5)
    assert row["alternating_copied_per_step"] > 1.5 * row["streamed_per_step"], row


def test_text_encoder_is_partially_loaded_on_a_tight_card(measured):
    roomy, tight = measured["text_encoder"]
    assert roomy["resident"] == roomy["size"] and "partially" not in roomy["info"], roomy
    assert 0 < tight["resident"] < tight["size"] and "partially loaded" in tight["info"], tight
    assert tight["features_equal"], tight
