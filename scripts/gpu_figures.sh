#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in as few commands as a short GPU lease allows: the GPU tests, the
# training-speed table (3 x 512 and 3 x 1024 at batch 128 and 256, against a bare nn.LSTM loop, eager and
# --compile) and the sampling figures. Each part writes its log to $OUT (the device tool's folder that comes
# back), else to bench-out/gpu/.
#
#   bash scripts/gpu_figures.sh                        # all parts (about 12 minutes on an H200)
#   bash scripts/gpu_figures.sh tests sampling         # some: tests, table, compile, sampling
#
# It uses the interpreter that already has a CUDA torch (PYTHON, default python3) with the project on
# PYTHONPATH: nothing is installed. Tiny Shakespeare is used where device-data/tinyshakespeare.txt exists
# (copy it there from ../shared/data and carry device-data/), else the built-in corpus. SEQ sets the
# sequence length of the table (default 128).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
LOGS=${OUT:-bench-out/gpu}
SEQ=${SEQ:-128}
mkdir -p "$LOGS"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
CORPUS=()
[ -f device-data/tinyshakespeare.txt ] && CORPUS=(--corpus device-data/tinyshakespeare.txt)
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests table compile sampling)
status=0

run() {  # run LOG COMMAND...: the command's output to the screen and appended to $LOGS/LOG
    local log=$1
    shift
    echo "\$ $*" | tee -a "$LOGS/$log"
    "$@" 2>&1 | tee -a "$LOGS/$log" || status=1
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpus', torch.cuda.device_count())"
} 2>&1 | tee "$LOGS/machine.txt"

for part in "${parts[@]}"; do
    case $part in
    tests)
        run tests.txt "$PY" -m pytest -q -rs tests/test_gpu.py tests/test_fastsample.py tests/test_data.py
        ;;
    table | compile)
        extra=()
        [ "$part" = compile ] && extra=(--compile)
        for hidden in 512 1024; do
            for batch in 128 256; do
                run "$part.txt" "$PY" benchmarks/train_speed.py --device cuda --precision bf16 --layers 3 \
                    --hidden "$hidden" --batch-size "$batch" --seq-len "$SEQ" --seconds 10 --rounds 2 \
                    --warmup-steps 10 "${CORPUS[@]}" "${extra[@]}"
            done
        done
        ;;
    sampling)
        run sampling.txt "$PY" benchmarks/sampling.py --device cuda --seconds 2
        ;;
    *)
        echo "unknown part: $part (tests, table, compile, sampling)" >&2
        status=2
        ;;
    esac
done
exit $status
