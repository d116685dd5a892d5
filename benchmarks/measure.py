"""Side-by-side measurement: each case runs in a fresh Python process, so its peak memory is its own.

A case is a function `setup() -> step` in a benchmark module; the child process calls `setup`, notes the
resident memory it holds and resets the kernel's high-water mark (so setup's own transients do not hide the
step's), runs `step` once to warm up (the memory peak of a step shows there), then `repeats` more times for
the time. Reported: the median step time and the step's peak memory above what setup held.
"""

import json
import resource
import statistics
import subprocess
import sys
import time


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


def child(module_name: str, case: str, repeats: int, options: dict) -> None:
    import importlib

    import torch

    torch.manual_seed(0)
    module = importlib.import_module(module_name)
    step = module.CASES[case](**options)
    if reset_peak():
        before = status_mb("VmRSS")
        step()
        peak = status_mb("VmHWM") - before
    else:  # no clear_refs: the peak above setup's own peak, which setup's transients may hide
        before = peak_rss_mb()
        step()
        peak = peak_rss_mb() - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print("RESULT " + json.dumps({"seconds": statistics.median(times), "peak_mb": peak, "times": times}))


def measure(module_name: str, case: str, repeats: int = 3, **options) -> dict:
    """Run one case in a fresh process and return its median seconds and peak step memory (MB)."""
    command = [sys.executable, "-m", "benchmarks.measure", module_name, case, str(repeats), json.dumps(options)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{module_name}:{case} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))
