#!/usr/bin/env bash
# GPU check (run by hand on a CUDA machine): builds against a pip PyTorch's CUDA libtorch, exports a random-weight
# SD 1.5 (full size, float16, 512x512) with a random LGP, and times `generate --device cuda` and bench_engine.
# Usage: bash bench/gpu_sd15.sh [OUT_DIR]   (PYTHON=... picks the interpreter whose torch has CUDA;
#        DEVLIBS=DIR points at extracted Debian -dev packages when the machine lacks jansson/turbojpeg headers;
#        REDUCED=1 exports the reduced-width layout instead; VOCAB=FILE the CLIP vocabulary, default
#        ../shared/clip/bpe_simple_vocab_16e6.txt.gz)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/sg-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python3)}
TORCH=$("$PY" -c "import torch, os; print(os.path.dirname(torch.__file__))")
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
if [ -n "${DEVLIBS:-}" ]; then
  D=$(cd "$DEVLIBS" && pwd)
  sed -i "s|=/usr|=$D/usr|" "$D"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
  export PKG_CONFIG_PATH="$D/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export LD_LIBRARY_PATH="$D/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
t0=$(date +%s)
meson setup build-cuda -Dtorch_dir="$TORCH" -Dpython="$PY" -Dbuildtype=release >"$OUT/setup.log" 2>&1 ||
  { tail -30 "$OUT/setup.log"; exit 1; }
ninja -C build-cuda server/sketchguide bench/bench_engine >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
SG=build-cuda/server/sketchguide
$SG generate --device cuda --prompt "a red star on a plain blue background" --sketch docs/examples/star.png \
  --seed 1 --steps 50 --output "$OUT/shapes_cuda.png" --quiet
MODEL="$OUT/sd15"
t0=$(date +%s)
VOCAB=${VOCAB:-../shared/clip/bpe_simple_vocab_16e6.txt.gz}
if [ -n "${REDUCED:-}" ]; then "$PY" tools/random_model.py --reduced --out "$MODEL" --dtype float16 --vocab "$VOCAB"
else "$PY" tools/random_model.py --out "$MODEL" --dtype float16 --vocab "$VOCAB"; fi
echo "exported in $(( $(date +%s) - t0 )) s"
$SG info --model "$MODEL" --check --device cuda
$SG generate --model "$MODEL" --device cuda --prompt "a photo of a cat" --sketch docs/examples/star.png \
  --seed 1 --steps 50 --output "$OUT/sd15_cuda.png" --quiet
build-cuda/bench/bench_engine "$MODEL" docs/examples/star.png "a photo of a cat" 50 3 16 cuda 1 | tee "$OUT/bench_sd15.json"
build-cuda/bench/bench_engine "$MODEL" docs/examples/star.png "a photo of a cat" 50 3 16 cuda 4 | tee "$OUT/bench_sd15_x4.json"
