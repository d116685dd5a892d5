"""Side-by-side measurement of a benchmark's variants (e.g. new against naive), in fresh child processes.

A case is a function `setup(**options) -> step` in a benchmark module. Two kinds of child process:

- memory, one per variant: setup, note the resident memory it holds, reset the kernel's high-water mark (so setup's
  own transients do not hide the step's), run one step, read the peak above setup. A step may return the MB of
  gradients it leaves behind (the same for every method): reported too, so the step's working memory (peak less
  those) can be read apart from them.
- time, one for all variants: set every variant up, warm each up once, then alternate them step by step (the
  order reversed every round), so a slow spell of a shared machine falls on every side alike, not on whichever
  process ran then. Reported: each variant's median step time.
"""

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: the high-water mark), in MB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> bool:
    """Linux resets VmHWM to the current RSS when "5" is written to clear_refs (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def setup(module_name: str, case: str, options: dict):
    import importlib

    import torch

    torch.manual_seed(0)
    return importlib.import_module(module_name).CASES[case](**options)


def child_memory(module_name: str, case: str, options: dict) -> dict:
    step = setup(module_name, case, options)
    if reset_peak():
        before = status_mb("VmRSS")
        gradients = step()
        peak = status_mb("VmHWM") - before
    else:  # no clear_refs: the peak above setup's own peak, which setup's transients may hide
        before = peak_rss_mb()
        gradients = step()
        peak = peak_rss_mb() - before
    return {"peak_mb": peak, "gradients_mb": gradients}


def child_times(module_name: str, case: str, variants: dict, repeats: int) -> dict:
    steps = {name: setup(module_name, case, options) for name, options in variants.items()}
    for step in steps.values():
        step()  # warm-up
    times = {name: [] for name in steps}
    for round_index in range(repeats):
        for name in list(steps) if round_index % 2 == 0 else list(steps)[::-1]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def run_child(*arguments) -> dict:
    command = [sys.executable, "-m", "benchmarks.measure", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(arguments[:3])} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def compare(module_name: str, case: str, variants: dict[str, dict], repeats: int = 5) -> dict[str, dict]:
    """Per variant: its peak step memory (a fresh process each), the gradients it returns, and its median step
    time over `repeats` steps alternated with the other variants' in one process."""
    results = {name: run_child("memory", module_name, case, json.dumps(options)) for name, options in variants.items()}
    times = run_child("times", module_name, case, json.dumps(variants), str(repeats))
    for name, result in results.items():
        result.update(seconds=statistics.median(times[name]), times=times[name])
    return results


if __name__ == "__main__":
    kind, module, case_name, *rest = sys.argv[1:]
    if kind == "memory":
        result = child_memory(module, case_name, json.loads(rest[0]))
    else:
        result = child_times(module, case_name, json.loads(rest[0]), int(rest[1]))
    print("RESULT " + json.dumps(result))
