"""Timing of benchmark calls, shared by the bench scripts: every function timed in turns, after a warm-up.

``time_in_turns(fns, ...)`` runs each function ``warmup`` times, times one call to size its runs (about
``seconds / repeats`` each), then times ``repeats`` runs of every function in turns (so a slow moment of a shared
machine hits all of them alike). It gives, per function, the wall-clock and process-CPU seconds per call of
each run. CUDA work is synchronised before every clock read.
"""
import statistics
import time

import torch


def time_in_turns(fns: dict, seconds: float, warmup: int, device, repeats: int = 3) -> dict:
    """``{name: dict(times=[s per call per run], cpu_times=[...], iters=calls per run)}``."""
    sync = torch.cuda.synchronize if torch.device(device).type == 'cuda' else (lambda: None)
    iters = {}
    for k, fn in fns.items():
        for _ in range(warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        iters[k] = max(1, int(seconds / repeats / max(time.perf_counter() - t0, 1e-6)))
    out = {k: dict(times=[], cpu_times=[], iters=iters[k]) for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(iters[k]):
                fn()
            sync()
            out[k]['times'].append((time.perf_counter() - t0) / iters[k])
            out[k]['cpu_times'].append((time.process_time() - c0) / iters[k])
    return out


def images_per_second(timing: dict, n_images: int) -> dict:
    """One function's ``time_in_turns`` entry as images/s: the median and each run's rate."""
    rates = [n_images / t for t in timing['times']]
    return dict(img_s=statistics.median(rates), rates=rates, iters=timing['iters'])
