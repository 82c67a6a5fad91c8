#!/usr/bin/env bash
# The one prepared run for a session that is lent a GPU machine (python3 3.12 with torch 2.11+cu130,
# no package registry). About 5 minutes: the CUDA checks, then the bench of the fp16 CUDA path.
#
#   bash benchmarks/gpu_session.sh            # from the repository root; results under $OUT
#
# Wheels come with the working tree, in $WHEELS (default .whl/, git-ignored: never commit them), and
# are installed with --no-deps into /tmp/site: onnxruntime-gpu 1.31.1, transformers 4.57.6,
# huggingface_hub 0.36.2, tokenizers 0.22.2, optimum 2.1.0, optimum-onnx 0.1.0, and whatever of
# onnx, protobuf, ml_dtypes, safetensors, regex, pyyaml, rich, click, matplotlib the machine lacks
# (the preflight below names the missing ones). `carry` moves at most 64 MiB of ignored files: wheels
# larger than that can travel under shared/ instead (WHEELS=shared/wheels bash benchmarks/gpu_session.sh).
# Dry run without a GPU: python benchmarks/cuda_check.py --device cpu --shape tiny --json /tmp/c.json
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
WHEELS=${WHEELS:-.whl}
SITE=/tmp/site
mkdir -p "$OUT" "$SITE"
exec > >(tee "$OUT/gpu_session.log") 2>&1
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

if compgen -G "$WHEELS/*.whl" > /dev/null; then
    python3 -m pip install --quiet --no-deps --no-index --target "$SITE" "$WHEELS"/*.whl || echo "pip install failed"
fi
export PYTHONPATH="$SITE:$PWD" HF_HUB_OFFLINE=1 CHATBOT_LLM_HOME=/tmp/chatbot_home

# preflight: every module the two steps import, and the CUDA provider
python3 - <<'EOF' || exit 1
import importlib
missing = []
for name in ("onnxruntime", "onnx", "numpy", "tokenizers", "transformers", "optimum.exporters.onnx", "torch",
             "safetensors", "click", "rich", "jinja2"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__}: {str(exc)[:80]})")
if missing:
    raise SystemExit("missing: " + "; ".join(missing))
import onnxruntime as ort, torch
print("onnxruntime", ort.__version__, getattr(ort, "cuda_version", ""), ort.get_available_providers())
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
if "CUDAExecutionProvider" not in ort.get_available_providers():
    raise SystemExit("this onnxruntime has no CUDA provider")
EOF

# 1. the CUDA checks (exports the gpt2-124m shape's fp16 once; the bench reuses it)
timeout 200 python3 benchmarks/cuda_check.py --json "$OUT/cuda_check.json"
echo "cuda_check exit $?"

# 2. the bench: PyTorch eager, fp16 without CUDA graphs, fp16 with them
PLOT=()
python3 -c "import matplotlib" 2>/dev/null && PLOT=(--plot "$OUT/bench_gpt2-124m_cuda.png")
timeout 300 python3 -m chatbot_llm bench --shape gpt2-124m --device cuda --backends torch,onnx-fp16-nograph,onnx-fp16 \
    --batch-sizes 1,8,32 --prompt-tokens 20 --new-tokens 64 --repeats 5 \
    --json "$OUT/bench_gpt2-124m_cuda.json" "${PLOT[@]}"
echo "bench exit $?"
date -u
