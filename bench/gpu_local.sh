#!/usr/bin/env bash
# bench_local.py at real transformer sizes on one GPU, in one short run on a lent machine
# that has PyTorch but none of reelgate's server packages and no network: they travel as
# wheels in .whl/ (git-ignored; see the device tool's README), installed into $WORK/site.
#
#   bash bench/gpu_local.sh                 # on the GPU machine, from the repository root
#   SMOKE=1 bash bench/gpu_local.sh         # here, on a CPU: the same command lines at
#                                           # tiny sizes, to check the flow before a run
#
# Random weights (tiny.py), no download: Wan2.1 1.3B's transformer (30 layers, 12 heads x
# 128, feed-forward 8960) at 832x480 x 81 frames and LTX-Video 2B's (28 layers, 32 heads x
# 64) at 768x512 x 121 frames; their VAEs and text encoders stay tiny. LTX first: it is the
# cheaper one, so a slow Wan cannot cost its figures. Each family has a hard limit; at the
# limit bench_local gets SIGINT and reports the rounds it completed. Everything printed
# also goes to $OUT/log, with each family's rounds in $OUT/<family>.json.
#
# Variables: OUT (default ./gpu-out), PY (python3), WORK (/tmp: the wheels go to
# $WORK/site), DEVICE (cuda), DTYPE (bfloat16), ROUNDS (3), LTX_STEPS (20), WAN_STEPS (8),
# LTX_LIMIT_S (150), WAN_LIMIT_S (240).

set -u -o pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log") 2>&1
PY=${PY:-python3}
WORK=${WORK:-/tmp}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
ROUNDS=${ROUNDS:-3}
LTX_STEPS=${LTX_STEPS:-20}
WAN_STEPS=${WAN_STEPS:-8}
LTX_LIMIT_S=${LTX_LIMIT_S:-150}
WAN_LIMIT_S=${WAN_LIMIT_S:-240}
# Appended to each family's arguments (argparse keeps the last of a repeated option).
SHRINK=""
if [ "${SMOKE:-0}" = 1 ]; then
  DEVICE=cpu DTYPE=float32 ROUNDS=2 LTX_STEPS=3 WAN_STEPS=3
  SHRINK="--layers 1 --heads 2 --head-dim 16 --width 64 --height 64"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
log() { echo "[$(date -u +%T)] $*"; }

log "start: $(uname -n), $($PY -V 2>&1)"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  t=$SECONDS
  timeout 180 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target $WORK/site .whl/*.whl || { log "wheel install failed"; exit 1; }
  export PYTHONPATH=$WORK/site
  log "installed $(ls .whl/*.whl | wc -l) wheels into $WORK/site in $((SECONDS - t)) s"
fi
# reelgate from this tree, ahead of any installed copy; the server subprocess inherits it.
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}

# reelgate.services imports the S3 adapter, hence boto3 (17 MB of wheels), at start-up.
# Where it is not installed, a stub stands in: these servers store videos on local disk
# and never reach S3.
if ! $PY -c "import boto3.session, botocore.config" 2>/dev/null; then
  log "boto3 not installed: a stub stands in (local storage only in this run)"
  mkdir -p $WORK/stub/boto3/s3 $WORK/stub/botocore
  : >$WORK/stub/boto3/__init__.py
  : >$WORK/stub/boto3/s3/__init__.py
  : >$WORK/stub/botocore/__init__.py
  printf 'class Session:\n    def __init__(self, *a, **k):\n        raise RuntimeError("boto3 stub: no S3 in this run")\n' \
    >$WORK/stub/boto3/session.py
  echo 'class S3UploadFailedError(Exception): pass' >$WORK/stub/boto3/exceptions.py
  printf 'class TransferConfig:\n    def __init__(self, *a, **k): pass\n' >$WORK/stub/boto3/s3/transfer.py
  printf 'class Config:\n    def __init__(self, *a, **k): pass\n' >$WORK/stub/botocore/config.py
  printf 'class BotoCoreError(Exception): pass\nclass ClientError(Exception): pass\n' \
    >$WORK/stub/botocore/exceptions.py
  export PYTHONPATH=$PYTHONPATH:$WORK/stub
fi

# Every import the server and the bench make, before any time goes to building weights.
timeout 180 $PY - <<'EOF' || { log "imports failed: stopping before the benchmark"; exit 1; }
import importlib, time
t = time.perf_counter()
for m in ("reelgate.cli", "reelgate.api.app", "reelgate.backends.local.backend",
          "reelgate.backends.local.tiny", "tests.conftest", "diffusers", "ftfy", "av",
          "uvicorn", "httptools", "psutil"):
    importlib.import_module(m)
import diffusers, fastapi, pydantic, torch, transformers
print(f"imports ok in {time.perf_counter() - t:.1f} s: torch {torch.__version__}, diffusers "
      f"{diffusers.__version__}, transformers {transformers.__version__}, fastapi "
      f"{fastapi.__version__}, pydantic {pydantic.VERSION}; cuda "
      f"{torch.cuda.is_available() and torch.cuda.get_device_name()}")
EOF

SMI=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi
  # GPU load through the run, every 2 s: shows whether the GPU idles between steps.
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw,clocks.sm \
    --format=csv -l 2 >"$OUT/smi.csv" 2>&1 &
  SMI=$!
fi

family() {  # family NAME LIMIT_S ARGS...
  local name=$1 limit=$2 t=$SECONDS rc
  shift 2
  log "== $name: limit $limit s: bench_local.py $*"
  # -s INT: bench_local reports the rounds done; -k: killed if it still has not ended.
  timeout -s INT -k 30 "$limit" $PY bench/bench_local.py --device "$DEVICE" --dtype "$DTYPE" \
    --threads 4 --rounds "$ROUNDS" --warmup 1 --json "$OUT/$name.json" "$@"
  rc=$?
  log "== $name: exit $rc after $((SECONDS - t)) s"
}

family ltx "$LTX_LIMIT_S" --family ltx --layers 28 --heads 32 --head-dim 64 \
  --real-compression --width 768 --height 512 --fps 30 --duration 4 --steps "$LTX_STEPS" \
  $SHRINK
family wan "$WAN_LIMIT_S" --family wan --layers 30 --heads 12 --head-dim 128 --ffn-dim 8960 \
  --width 832 --height 480 --fps 20 --duration 4 --steps "$WAN_STEPS" $SHRINK

[ -n "$SMI" ] && kill "$SMI"
log "done in $SECONDS s"
# Closing the output lets tee reach its end and finish $OUT/log before the run returns.
exec >&- 2>&-
sleep 1
