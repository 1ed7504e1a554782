#!/usr/bin/env python3
"""Where the CPU time of an `invert train` run goes, from a `perf record --call-graph dwarf`
profile (used by scripts/profile_train.sh).

usage: perf script -i perf.data -F tid,time,ip,sym | perf_train_phases.py [PID]

Every sample is counted twice:
- by phase of the training step (text-encoder forward, U-Net forward, backward, optimiser, ...),
  read from the stack of the main thread; samples of pool threads (rayon, invert's kernel pool),
  whose stacks stop at the thread start, take the phase of the main thread's latest sample;
- by cost class, from the leaf and the stack (GEMM micro-kernels, libm expf, page faults on
  fresh buffers, memcpy, ...), and by the innermost burn operation.
Only samples after the first training step's start (the first sample inside
`Trainer::train_step`) are counted as "training loop"; setup (model loading, VAE caching) is
reported separately.
"""
import collections
import re
import sys

PHASES = [  # (phase, marker in the stack, checked from the root towards the leaf: first wins)
    ("setup: model loading", "invert_model::loading::load"),
    ("setup: VAE latent cache", "Trainer::new"),
    ("backward", "burn_tensor::tensor::api::autodiff::backward_impl"),
    ("forward: text encoder", "CLIPTextModel"),
    ("forward: U-Net", "UNet2DConditionModel::forward"),
    ("forward: loss/noise/inputs", "Trainer::loss"),
    ("batch sampling", "Trainer::batch"),
    ("optimiser + checks", "Trainer::train_step"),
    ("loop: logging/progress", "invert::commands::train::run"),
]


def cost_class(frames):
    """frames: leaf first."""
    stack = "\n".join(frames)
    leaf = frames[0] if frames else "?"
    if "try_enforce_runtime_align" in stack:
        return "Bytes re-alignment copy (alloc + memcpy + page faults)"
    if "exc_page_fault" in stack or "asm_exc_page_fault" in stack:
        return "page faults (first touch of new buffers)"
    if "gemm" in leaf:
        return "GEMM micro-kernels (matmul, conv as im2col GEMM)"
    if "expf" in leaf:
        return "libm expf (softmax exp, scalar)"
    if "memmove" in leaf or "memcpy" in leaf:
        return "memcpy (layout copies, contiguous, cat/slice)"
    if "memset" in leaf:
        return "memset (zero-filled buffers)"
    if re.search(r"malloc|free|_int_|cfree|munmap|mmap|madvise", leaf):
        return "allocator (malloc/free/munmap)"
    if "invert_model::cpu" in leaf:
        return "invert fused kernels (VAE cache only)"
    if re.search(r"rayon|spin|futex|sched_yield|parallel_for|Condvar", stack.split("\n")[0]) or \
            re.search(r"^(schedule|__schedule|futex|do_futex|finish_task_switch|_raw_spin)", leaf):
        return "threading (rayon / pool sync, scheduler)"
    if leaf.startswith(("[k]",)) or re.match(r"^[a-z_0-9.]+$", leaf):
        return "kernel other"
    m = re.search(r"burn_flex::(ops::\w+|zip|strided_index|layout)", leaf)
    if m:
        return "burn_flex " + m.group(1) + " (elementwise/reduce/index loops)"
    if "macerator" in leaf:
        return "burn_flex SIMD elementwise (macerator)"
    if "burn_autodiff" in leaf:
        return "burn_autodiff graph bookkeeping"
    if "call_mut" in leaf or "FnMut" in leaf or "FnOnce" in leaf:
        return "closures inlined into burn_flex loops"
    return "other: " + leaf[:80]


def burn_op(frames):
    """The innermost burn operation of the stack (leaf first): a backward step (`backward Exp`),
    else the autodiff-level forward op (`forward float_exp`, `forward conv2d`)."""
    for f in frames:
        m = re.search(r"::(\w+)::(\w+) as burn_autodiff::ops::backward::Backward", f)
        if m:
            return f"backward {m.group(2)}"
        m = re.search(r"for burn_autodiff::backend::Autodiff<B,\s*C>>::(\w+)$", f)
        if m:
            return f"forward {m.group(1)}"
    return "(no burn op in stack: pool thread)"


def model_fn(frames):
    """The innermost invert_model function of the stack (the model block)."""
    for f in frames:
        m = re.search(r"invert_model::((?:\w+::)*\w+)", f)
        if m and "cpu::" not in m.group(1):
            parts = m.group(1).split("::")
            return "::".join(parts[-2:])
    return "(none: pool thread or backward)"


def main():
    pid = sys.argv[1] if len(sys.argv) > 1 else None
    samples = []  # (time, tid, frames)
    cur = None
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        m = re.match(r"\s*(\d+)\s+([\d.]+):\s*$", line)
        if m:
            cur = (float(m.group(2)), m.group(1), [])
            samples.append(cur)
            continue
        if cur is None:
            continue
        parts = line.strip().split(None, 1)
        sym = parts[1] if len(parts) > 1 else "?"
        sym = re.sub(r"\s+\(inlined\)$", "", sym)
        cur[2].append(sym)
    if not samples:
        sys.exit("no samples")
    main_tid = pid or collections.Counter(s[1] for s in samples).most_common(1)[0][0]
    samples.sort(key=lambda s: s[0])
    phase_of = []
    last_main = None
    loop_start = None
    for t, tid, frames in samples:
        if tid == main_tid:
            ph = "other (main thread)"
            root_first = list(reversed(frames))
            for name, marker in PHASES:
                if any(marker in f for f in root_first):
                    ph = name
                    break
            last_main = ph
            if loop_start is None and any("Trainer::train_step" in f for f in frames):
                loop_start = t
        else:
            ph = (last_main or "other") + " [pool]"
        phase_of.append(ph)

    def table(title, counter, total, limit=25):
        print(f"\n{title}")
        print("| share | samples | what |\n|---:|---:|---|")
        for k, v in counter.most_common(limit):
            print(f"| {100 * v / total:5.1f}% | {v} | {k} |")

    by_phase = collections.Counter()
    by_cost = collections.Counter()
    by_op = collections.Counter()
    by_fn = collections.Counter()
    by_phase_cost = collections.defaultdict(collections.Counter)
    n_loop = 0
    n_setup = 0
    for (t, tid, frames), ph in zip(samples, phase_of):
        base = ph.replace(" [pool]", "")
        if loop_start is None or t < loop_start or base.startswith("setup"):
            n_setup += 1
            continue
        n_loop += 1
        by_phase[base] += 1
        c = cost_class(frames)
        by_cost[c] += 1
        by_op[burn_op(frames)] += 1
        by_fn[model_fn(frames)] += 1
        by_phase_cost[base][c] += 1
    print(f"samples: {len(samples)} in all, {n_setup} before the first step or in setup, "
          f"{n_loop} in the training loop (main thread {main_tid})")
    table("Training loop by phase (all threads)", by_phase, n_loop)
    table("Training loop by cost class (all threads)", by_cost, n_loop)
    table("Training loop by innermost burn op (all threads)", by_op, n_loop, 30)
    table("Training loop by innermost invert_model function (main thread)", by_fn, n_loop, 15)
    for ph, cnt in sorted(by_phase_cost.items(), key=lambda kv: -sum(kv[1].values())):
        table(f"Phase '{ph}' by cost class", cnt, n_loop, 8)


if __name__ == "__main__":
    main()
