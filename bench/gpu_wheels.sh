#!/usr/bin/env bash
# Downloads into .whl/ the wheels that the device machine's image lacks for bench/gpu_check.py:
# the server's own deps and the training stack beyond torch/transformers/peft/accelerate, at the
# versions this venv has (so the device runs what the tests here ran), for CPython 3.12 x86-64.
#
#   bench/gpu_wheels.sh            # then: carry [".whl"] in the device run (see bench/README.md)
#
# Left out on purpose, because the image has them (/work/.library/device/KINDS.md): pyarrow,
# httpx, jinja2, anyio, click, rich, pyyaml, numpy, pandas, xxhash, fsspec, tabulate, pluggy,
# python-dateutil, multidict, huggingface-hub, tensorboard (trainers/trackers.py's event files).
# openreward (and its large tree: anthropic, openai, google-genai, opentelemetry) is imported only
# by jobs with environments, and wandb (about 20 MiB: its Go core) only by jobs on a box with the
# W&B integration; the check runs neither (without them a trainer warns and trains on).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
WHEELS=(
    # server
    litestar litestar-htmx msgspec uvicorn multipart sniffio annotated-types
    sqlite-utils sqlite-fts4 click-default-group apscheduler tzlocal
    av  # upload checks of the video demo's zip, and the video trainer's decoding
    # training stack
    trl datasets dill multiprocess diffusers importlib_metadata bitsandbytes
    # The version the tests ran (the image has 5.17, which the trainer also accepts, but the
    # numbers should be this venv's). 5.24 works with the image's huggingface-hub 1.33 and
    # tokenizers 0.23 (checked here with hub 1.33 on PYTHONPATH).
    transformers
)
PLATFORMS=()
for p in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
    manylinux_2_17 manylinux2014 manylinux1; do
    PLATFORMS+=(--platform "${p}_x86_64")
done

rm -rf .whl && mkdir -p .whl
specs=()
for name in "${WHEELS[@]}"; do
    version=$("$PIP" show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [ -n "$version" ] || { echo "not installed in the venv: $name" >&2; exit 1; }
    specs+=("$name==$version")
done
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 \
    --abi none "${PLATFORMS[@]}" -d .whl "${specs[@]}"

# bitsandbytes ships one native library per CUDA/ROCm/XPU build (42 MiB): keep only the one that
# matches the device's torch (2.11+cu130, so BNB_CUDA=130) and the CPU one, so the carry fits.
"$(dirname "$PIP")/python" - "${BNB_CUDA:-130}" .whl/bitsandbytes-*.whl <<'PY'
import re
import sys
import zipfile
from pathlib import Path

cuda, path = sys.argv[1], Path(sys.argv[2])
keep = {f"libbitsandbytes_cuda{cuda}.so", "libbitsandbytes_cpu.so"}
slim = path.with_suffix(".slim")
with zipfile.ZipFile(path) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    names = [
        n for n in src.namelist() if not re.fullmatch(r"bitsandbytes/libbitsandbytes_.*\.so", n) or n.split("/")[-1] in keep
    ]
    if not any(n.endswith(f"_cuda{cuda}.so") for n in names):
        sys.exit(f"{path.name} has no libbitsandbytes_cuda{cuda}.so")
    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    kept = set(names)
    for name in names:
        if name != record:
            dst.writestr(src.getinfo(name), src.read(name))
    # pip checks nothing against RECORD, but a RECORD naming absent files would confuse uninstalls.
    lines = [line for line in src.read(record).decode().splitlines() if line.split(",")[0] in kept]
    dst.writestr(src.getinfo(record), "\n".join(lines) + "\n")
slim.replace(path)
PY

du -b .whl/*.whl | sort -n | awk '{printf "%10.1f KiB  %s\n", $1 / 1024, $2}'
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
limit=$((64 * 1024 * 1024))
printf 'wheels %.1f MiB + working tree %.1f MiB = %.1f MiB of the 64 MiB carry\n' \
    "$(echo "$wheels / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" "$(echo "($wheels + $tree) / 1048576" | bc -l)"
if [ $((wheels + tree)) -gt $limit ]; then
    echo "too big for the carry: drop the largest wheels above" >&2
    exit 1
fi
