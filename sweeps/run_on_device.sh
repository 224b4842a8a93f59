#!/usr/bin/env bash
# One resumable slice of the H100 batch on the lent GPU machine (see README, "GPU sweeps"):
#   carry .whl (from ../shared/device/notebook-wheels.sh); run: bash sweeps/run_on_device.sh sweeps/h100.yaml 540
# Installs papermill/nbval wheels, runs the batch for at most $2 seconds, packs the results into $OUT.
# Further arguments go to `moe-lab batch` (--force after `moe-lab prune`: every notebook again, missing cells only).
set -uo pipefail
batch=${1:-sweeps/h100.yaml}; budget=${2:-540}; shift $(( $# < 2 ? $# : 2 ))
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
out_dir=$(python3 -c "import sys; from moe_lab.batch import load_batch; print(load_batch(sys.argv[1]).out_dir)" "$batch")
timeout "$budget" python3 -m moe_lab.cli batch "$batch" "$@" > "$OUT/batch.log" 2>&1
echo "batch exit: $?"
tar czf "$OUT/results.tgz" -C "$PWD" "$(realpath --relative-to="$PWD" "$out_dir")"
tail -n 25 "$OUT/batch.log"
