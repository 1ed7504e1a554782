#!/usr/bin/env python3
"""Run diffusers' examples/textual_inversion/textual_inversion.py UNMODIFIED and record the time
of every optimisation step and the peak memory torch allocated on the GPU.

usage: python diffusers_ti.py OUT_JSON SCRIPT [script args...]
Env: BENCH_SKIP (5): intervals dropped before the steady window.

The script runs as __main__ (runpy) after tqdm.auto.tqdm is replaced by a subclass whose
update() stamps time.perf_counter(); the script calls progress_bar.update(1) once per
optimisation step, so the intervals between stamps are the step times (data loading included),
as the CPU reference kit's bench_ti.py measures them. On CUDA each stamp first synchronises the
device, so a step's time is its GPU work, not just its launch.
"""
import json
import os
import runpy
import statistics
import sys
import time

import torch
import tqdm.auto

STAMPS = []
T0 = time.perf_counter()
CUDA = torch.cuda.is_available()


class TimedTqdm(tqdm.auto.tqdm):
    def update(self, n=1):
        if self.desc == "Steps":
            if CUDA:
                torch.cuda.synchronize()
            STAMPS.append(time.perf_counter())
        return super().update(n)


tqdm.auto.tqdm = TimedTqdm

out_json, script = sys.argv[1], sys.argv[2]
sys.argv = [script] + sys.argv[3:]
err = None
try:
    runpy.run_path(script, run_name="__main__")
except BaseException as e:  # noqa: BLE001 - recorded, then re-raised
    err = repr(e)
    raise
finally:
    d = [b - a for a, b in zip(STAMPS, STAMPS[1:])]
    skip = int(os.environ.get("BENCH_SKIP", "5"))
    steady = d[skip:] if len(d) > skip + 2 else d
    res = dict(
        tool="diffusers",
        argv=sys.argv[1:],
        torch=torch.__version__,
        device=torch.cuda.get_device_name() if CUDA else "cpu",
        steps=len(STAMPS),
        first_step_at_s=round(STAMPS[0] - T0, 3) if STAMPS else None,
        step_intervals_s=[round(x, 4) for x in d],
        s_per_step=round(statistics.median(steady), 4) if steady else None,
        torch_peak_allocated_mib=round(torch.cuda.max_memory_allocated() / 2**20) if CUDA else None,
        torch_peak_reserved_mib=round(torch.cuda.max_memory_reserved() / 2**20) if CUDA else None,
        error=err,
    )
    with open(out_json, "w") as f:
        json.dump(res, f, indent=1)
