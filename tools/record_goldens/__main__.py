"""Record the reference goldens into one folder (file names as in tests/data/).

    python -m tools.record_goldens --reference /path/to/ideogram4/src --out-dir tests/data/families/<name>
    python -m tools.record_goldens --reference ... --out-dir ... --only dit,vae

Run from the project root.  ``--reference`` is your local checkout of github:RyukoMatoiFan/ideogram4 (its
``src/`` or the checkout root); its commit (``git rev-parse HEAD``, or ``--reference-id`` where it is not a git
checkout) goes into each file's ``reference`` metadata entry, next to a description of this machine (CPU model
and ISA flags, torch, ``cpu_capability``, oneDNN, threads).  Torch runs with the test suite's thread count
(``min(2, default)``, tests/conftest.py).  Hugging Face hub access is switched off: nothing is downloaded.
Afterwards add the folder to tests/data/golden_families.json with the fingerprint pytest prints in its header.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub / transformers: never download
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import argparse  # noqa: E402
import importlib  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from . import common  # noqa: E402

GOLDENS = ("dit", "text_encoder", "text_encoder_packed", "vae", "vae_encoder")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.record_goldens", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True,
                    help="local checkout of github:RyukoMatoiFan/ideogram4 (its src/ directory or the root above it)")
    ap.add_argument("--out-dir", type=Path, required=True, help="folder for the .safetensors files")
    ap.add_argument("--only", default=",".join(GOLDENS),
                    help=f"comma-separated subset of {','.join(GOLDENS)} (default: all)")
    ap.add_argument("--reference-id", default=None,
                    help="metadata 'reference' value, e.g. RyukoMatoiFan/ideogram4@9c167a2 "
                         "(default: from the checkout's git HEAD; required if it is not a git checkout)")
    args = ap.parse_args(argv)

    only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(only) - set(GOLDENS))
    if unknown or not only:
        ap.error(f"--only: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(GOLDENS)}")
    reference = common.find_reference(args.reference, args.reference_id)
    common.activate(reference)
    threads = common.use_test_threads()
    print(f"reference {reference.id} at {reference.src}; {threads} threads; {common.cpu_description()}")

    start = time.perf_counter()
    for name in (g for g in GOLDENS if g in only):  # fixed order
        module = importlib.import_module(f"{__package__}.{name}")
        t0 = time.perf_counter()
        tensors, recipe = module.record()
        path = args.out_dir / module.FILENAME
        common.save(path, tensors, {**recipe, **common.machine_metadata(), "reference": reference.id})
        print(f"wrote {path} ({len(tensors)} tensors, {time.perf_counter() - t0:.0f} s)", flush=True)
        for k, v in sorted(tensors.items()):
            print(f"    {k:34s} {str(v.dtype):15s} {tuple(v.shape)}")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
