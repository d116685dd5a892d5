"""Running LangBridge models under evaluation harnesses.

`HarnessRunner` holds what a harness asks of a model (batched generation with stop strings; the log-likelihood of a
continuation, summed: higher is likelier) and needs nothing but transformers. `models/` is the lmms-eval plugin built
on it, which answers in lmms-eval's own convention instead (a loss per request: lower is likelier). Install and run
(README, "Evaluate"; tested with lmms-eval 0.7.3):

    pip install torch==2.13.0 && pip install "langbridge-hf[lmms-eval]" torch==2.13.0
    python -c "import torchvision" 2>/dev/null || pip uninstall -y torchvision
    lmms-eval --model langbridge --model_args pretrained=DIR --batch_size 8 --tasks ... [--include_path MY_TASKS]
"""

from .runner import HarnessRunner

__all__ = ["HarnessRunner"]
