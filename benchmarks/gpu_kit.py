"""Pack what ``benchmarks/gpu_check.sh`` needs on a bare GPU machine into one file that travels with the tree.

The GPU machines lent to a session (see the team guide) have torch, triton, transformers, safetensors, numpy and
pytest, but no ComfyUI, none of ComfyUI's own extra packages and none of the pack's, and they reach no package
registry.  Run this once on the developer's machine; it writes ``.carry/gpu_kit.tar.xz`` (git-ignored, ≈ 30 MB):

* ``site/`` — the packages that image lacks, installed with ``pip install --target`` for *its* interpreter
  (``--python-version``, x86-64 manylinux): the pack's (``requirements.txt``: gguf, jsonschema and its needs;
  bitsandbytes from the ``cuda`` extra) and what ``import comfy.*`` needs (comfy-kitchen, comfy-aimdo, torchsde,
  … at the versions the ComfyUI checkout's ``requirements.txt`` pins).  Binaries for other accelerators are left
  out (bitsandbytes' libraries for other CUDA/ROCm versions, comfy-kitchen's HIP extension); each one left out is
  listed in the manifest.
* ``comfyui/`` — the sources of a local ComfyUI checkout (``--comfyui``; nothing is downloaded): its Python files
  and small configs, without tests, API nodes, blueprints and the tokenizer vocabularies (the benchmarks build no
  ComfyUI text encoder).
* ``manifest.txt`` — versions, what was left out and why; ``gpu_check.sh`` prints it first.

``gpu_check.sh`` unpacks the kit to ``/tmp/gpu_kit`` when it finds it, puts ``site/`` on ``PYTHONPATH`` and uses
``comfyui/`` unless ``COMFYUI_PATH`` is set.  The device call is then::

    python benchmarks/gpu_kit.py --comfyui /path/to/ComfyUI          # here, once (≈ 2 min, mostly xz)
    run(command="bash benchmarks/gpu_check.sh", carry=[".carry"], timeout_s=540)   # the device call

``--check`` only lists what the kit holds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".carry" / "gpu_kit.tar.xz"
CARRY_LIMIT = 64 * 1024 ** 2  # what one device call may carry, the working tree included

# Needed by `import comfy.model_management / comfy.sd / comfy.samplers / nodes` and absent from the GPU image,
# pinned as the ComfyUI checkout pins them; then the dependencies of those and of the pack's own packages that
# the image lacks (installed with --no-deps: torch, numpy, … are the image's own).
COMFY_PACKAGES = ("comfy-kitchen", "comfy-aimdo", "torchsde", "simpleeval", "blake3", "av")
EXTRA_DEPENDENCIES = ("trampoline", "referencing", "jsonschema-specifications", "rpds-py")
PACK_EXTRAS = ("bitsandbytes>=0.45",)  # pyproject's `cuda` extra: nf4 decode on the GPU
# ComfyUI folders the benchmarks never import, and files inside them that are data for other models.
COMFY_SKIP_DIRS = {".git", ".github", "tests", "tests-unit", "comfy_api_nodes", "blueprints", "script_examples",
                   "custom_nodes", "models", "input", "output", "temp", "user"}
COMFY_KEEP_SUFFIXES = {".py", ".json", ".yaml", ".yml", ".ini", ".txt", ".toml", ".mako"}
COMFY_MAX_FILE = 512 * 1024


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", type=Path, help="a local ComfyUI checkout (default: $COMFYUI_PATH)")
    ap.add_argument("--python-version", default="3.12", help="the GPU image's Python (default 3.12)")
    ap.add_argument("--cuda", default="130", help="CUDA version of the GPU image's torch, as bitsandbytes names its "
                                                   "libraries (default 130: torch 2.11+cu130)")
    ap.add_argument("--out", type=Path, default=KIT)
    ap.add_argument("--preset", type=int, default=9, help="xz preset (9: smallest, ≈ 2 min)")
    ap.add_argument("--check", action="store_true", help="only print the manifest of an existing kit")
    return ap.parse_args(argv)


def requirement_specs(path: Path) -> dict[str, str]:
    """``{normalised name: requirement line}`` of a requirements file (comments and blanks skipped)."""
    specs = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            specs[normalise(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0])] = line
    return specs


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def kit_requirements(comfyui: Path) -> list[str]:
    """The requirement lines to install: ComfyUI's pins for its packages, the pack's own lines, the extras."""
    comfy = requirement_specs(comfyui / "requirements.txt")
    ours = requirement_specs(ROOT / "requirements.txt")
    image = {"safetensors", "transformers", "tokenizers", "numpy", "pillow"}  # the GPU image has these
    reqs = [comfy.get(normalise(n), n) for n in COMFY_PACKAGES]
    reqs += [line for name, line in ours.items() if name not in image]
    return reqs + list(EXTRA_DEPENDENCIES) + list(PACK_EXTRAS)


def pip_install(reqs: list[str], target: Path, python_version: str):
    platforms = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64",
                                                                                         "manylinux1_x86_64"]
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--only-binary=:all:",
           "--target", str(target), "--python-version", python_version, "--implementation", "cp"]
    for p in platforms:
        cmd += ["--platform", p]
    subprocess.run(cmd + reqs, check=True)


def prune_binaries(site: Path, cuda: str) -> list[str]:
    """Remove accelerator libraries the GPU image cannot use; returns what was removed, with sizes."""
    removed = []
    keep = {f"libbitsandbytes_cuda{cuda}.so", "libbitsandbytes_cpu.so"}
    candidates = [p for p in (site / "bitsandbytes").glob("libbitsandbytes_*.so") if p.name not in keep]
    candidates += list((site / "comfy_kitchen" / "backends" / "hip").glob("_C.*"))
    for path in sorted(candidates):
        removed.append(f"{path.relative_to(site)} ({path.stat().st_size / 1024 ** 2:.1f} MiB)")
        path.unlink()
    if not (site / "bitsandbytes" / f"libbitsandbytes_cuda{cuda}.so").exists():
        sys.exit(f"bitsandbytes has no library for CUDA {cuda} (--cuda): nf4 would fall back to pure torch")
    return removed


def copy_comfyui(src: Path, dest: Path) -> int:
    """Copy the sources of a ComfyUI checkout (see the module docstring); returns the bytes copied."""
    if not (src / "comfy" / "model_management.py").is_file():
        sys.exit(f"--comfyui {src} is not a ComfyUI checkout (no comfy/model_management.py)")
    total = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if (not path.is_file() or rel.parts[0] in COMFY_SKIP_DIRS or "__pycache__" in rel.parts
                or path.suffix not in COMFY_KEEP_SUFFIXES or path.stat().st_size > COMFY_MAX_FILE
                or (path.suffix != ".py" and any("tokenizer" in part for part in rel.parts[:-1]))):
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)
        total += path.stat().st_size
    for folder in ("custom_nodes", "models", "input", "output", "temp"):
        (dest / folder).mkdir(exist_ok=True)
    return total


def installed_versions(site: Path) -> dict[str, str]:
    versions = {}
    for meta in site.glob("*.dist-info/METADATA"):
        head = meta.read_text(errors="replace").split("\n\n", 1)[0]
        fields = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)
        versions[fields.get("Name", meta.parent.name)] = fields.get("Version", "?")
    return dict(sorted(versions.items(), key=lambda kv: kv[0].lower()))


def comfyui_version(comfyui: Path) -> str:
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", (comfyui / "comfyui_version.py").read_text())
    return match.group(1) if match else "?"


def tree_bytes() -> int:
    """Bytes of what a device call sends besides the carried kit: tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def build(args) -> str:
    comfyui = (args.comfyui or Path(os.environ.get("COMFYUI_PATH", ""))).expanduser()
    if not str(comfyui):
        sys.exit("--comfyui (or $COMFYUI_PATH) must name a local ComfyUI checkout")
    reqs = kit_requirements(comfyui)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        pip_install(reqs, stage / "site", args.python_version)
        removed = prune_binaries(stage / "site", args.cuda)
        comfy_bytes = copy_comfyui(comfyui, stage / "comfyui")
        versions = installed_versions(stage / "site")
        manifest = "\n".join([
            f"gpu_kit built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} for Python {args.python_version}, "
            f"x86-64, CUDA {args.cuda}",
            f"ComfyUI {comfyui_version(comfyui)} sources ({comfy_bytes / 1024 ** 2:.1f} MiB, from {comfyui.name})",
            "packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            "left out, binaries for other accelerators: " + (", ".join(removed) or "none"),
        ]) + "\n"
        (stage / "manifest.txt").write_text(manifest)
        (stage / "manifest.json").write_text(json.dumps({"python": args.python_version, "cuda": args.cuda,
                                                         "comfyui": comfyui_version(comfyui), "packages": versions,
                                                         "left_out": removed, "requirements": reqs}, indent=1))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_suffix(".partial")
        with tarfile.open(partial, "w:xz", preset=args.preset) as tar:
            for name in ("manifest.txt", "manifest.json", "site", "comfyui"):
                tar.add(stage / name, arcname=name)
        partial.replace(args.out)
    return manifest


def read_manifest(kit: Path) -> str:
    with tarfile.open(kit, "r:xz") as tar:
        return tar.extractfile("manifest.txt").read().decode()


def main(argv=None):
    args = parse_args(argv)
    if not args.check:
        print(build(args), end="")
    elif not args.out.is_file():
        sys.exit(f"no kit at {args.out}: run python benchmarks/gpu_kit.py --comfyui PATH")
    else:
        print(read_manifest(args.out), end="")
    kit, tree = args.out.stat().st_size, tree_bytes()
    print(f"kit {kit / 1024 ** 2:.1f} MiB + working tree {tree / 1024 ** 2:.1f} MiB = "
          f"{(kit + tree) / 1024 ** 2:.1f} MiB of the {CARRY_LIMIT // 1024 ** 2} MiB a device call carries")
    if kit + tree > CARRY_LIMIT:
        sys.exit("too large for one device call")


if __name__ == "__main__":
    main()
