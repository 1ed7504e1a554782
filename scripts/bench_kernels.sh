#!/usr/bin/env bash
# GFLOP/s of invert's CPU kernels on SD 1.5's 512 px shapes, against the machine's matrix-product
# ceiling as torch measures it (fp32 sgemm 2048^3 on all cores): the figures of
# docs/PERFORMANCE.md's kernel table.
#
# usage: scripts/bench_kernels.sh          (Env: PYTHON (/work/venv/bin/python), BUILD (1))
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-/work/venv/bin/python}"
if [[ "${BUILD:-1}" == 1 ]]; then
    (cd "$ROOT" && cargo build --release -p invert-model --example kernel_rates) >&2
fi
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), family $(lscpu | sed -n 's/^CPU family: *//p') model $(lscpu | sed -n 's/^Model: *//p'), $(grep -q avx512f /proc/cpuinfo && echo AVX-512 || echo AVX2)"
"$PYTHON" - <<'PY'
import time, torch
n = 2048
a, b = torch.randn(n, n), torch.randn(n, n)
a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(f"torch {torch.__version__} sgemm {n}^3, {torch.get_num_threads()} threads: {2 * n**3 / best / 1e9:.1f} GFLOP/s")
PY
"$ROOT/target/release/examples/kernel_rates"
