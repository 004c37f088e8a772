#!/bin/bash
# The CUDA checks and benchmark, for a machine with an NVIDIA GPU.  Takes
# binaries built elsewhere (BIN: quantfs, test_backend, bench_backend,
# libqf_cuda.so) and writes its figures to OUT:
#   1. test_backend: cuBLAS/cuSOLVER/kernels against OpenBLAS/LAPACK;
#   2. bench_backend: one Qwen3-0.6B-shaped layer, phase by phase, cpu
#      and cuda in the same run;
#   3. through a FUSE mount (when /dev/fuse exists): gptq_w4_g128 of
#      MODEL (a real model) on each backend, their perplexity on EVAL,
#      then GPTQ of a generated model with Qwen3-0.6B's shapes, cpu and
#      cuda, 128 x 512 calibration tokens of CALIB.
# usage: BIN=dir OUT=dir MODEL=dir CALIB=file EVAL=file cuda_device.sh
set -u
CALIB=$(realpath "$CALIB") EVAL=$(realpath "$EVAL") MODEL=$(realpath "$MODEL")
BIN=$(realpath "$BIN") OUT=$(realpath "$OUT")
export QUANTFS="$BIN/quantfs" QUANTFS_CUDA_MODULE="$BIN/libqf_cuda.so"
cd "$(dirname "$0")/.."
nvidia-smi -L
ldd "$QUANTFS_CUDA_MODULE" | grep "not found"
timeout 180 "$BIN/test_backend" 2>&1 | tee "$OUT/test_backend.txt"
echo "test_backend exit ${PIPESTATUS[0]}"
timeout 240 "$BIN/bench_backend" 2>&1 | tee "$OUT/bench_backend.txt"
[ -e /dev/fuse ] || { echo "no /dev/fuse: mount checks skipped"; exit 0; }
work=$(mktemp -d)
prod() {	# backend model variant calib_n calib_len -> seconds, sha
	local mnt=$work/mnt-$1 t0 t1
	mkdir -p "$mnt"
	"$QUANTFS" mount "$(dirname "$2")" "$mnt" -f -o \
		"cache=$work/cache,backend=$1,calib=$CALIB,calib_n=$4,calib_len=$5" \
		>"$OUT/mount-$1-$(basename "$2").log" 2>&1 &
	for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
	t0=$(date +%s.%N)
	sha256sum "$mnt/$(basename "$2")/$3/model.safetensors" | cut -c1-16
	t1=$(date +%s.%N)
	echo "$1 $(basename "$2") $3: $(echo "$t1 - $t0" | bc) s"
	grep -E "backend:|done in|X\^T X" "$OUT/mount-$1-$(basename "$2").log"
	if [ -n "${6:-}" ]; then
		"$QUANTFS" eval "$mnt/$(basename "$2")/$3" --text "$EVAL" |
			grep -i perplexity
	fi
	"$QUANTFS" umount "$mnt"; wait
}
mkdir -p "$work/real"; cp -r "$MODEL" "$work/real/"
m=$work/real/$(basename "$MODEL")
prod cpu "$m" gptq_w4_g128 64 512 eval
prod cuda "$m" gptq_w4_g128 64 512 eval
[ -n "${QUICK:-}" ] && exit 0
"$QUANTFS" mkmodel "$work/gen/qwen3-0.6b-shapes" --hidden 1024 --inter 3072 \
	--layers 28 --heads 16 --kv-heads 8 --head-dim 128 --vocab 151936 --tie
prod cuda "$work/gen/qwen3-0.6b-shapes" gptq_w4_g128 128 512
prod cpu "$work/gen/qwen3-0.6b-shapes" gptq_w4_g128 128 512
