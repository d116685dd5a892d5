"""The lmms-eval model class: `lmms-eval --model langbridge --model_args pretrained=DIR,batch_size=8 --tasks ...`.

Needs lmms-eval (the `lmms-eval` extra, 0.7.x). The work itself is `HarnessRunner`'s; this class only speaks
lmms-eval's request protocol, which differs from the runner's own convention in one place:

- `HarnessRunner.loglikelihood` returns the summed log-probability of the continuation (higher is likelier);
- `LangBridge.loglikelihood` returns what lmms-eval's own models return (`llava`, `llava_hf`): a loss, the mean
  negative log-probability per continuation token (lower is likelier), because lmms-eval 0.7.3's `multiple_choice`
  scoring takes the `argmin` of these values (`ConfigurableTask.process_results` in `lmms_eval/api/task.py`).

lmms-eval 0.7.x passes every answer through `unwrap_generation_output` (`lmms_eval/api/instance.py`), which turns a
`(loss, is_greedy)` pair into its string; only a `GenerationResult` goes through untouched, so the pairs are wrapped
in one where the class exists.
"""

from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ....errors import LangBridgeUsageError
from ..runner import HarnessRunner

try:  # lmms-eval's registry, where this version has one; the plugin hook finds the class either way
    from lmms_eval.api.registry import register_model
except ImportError:  # pragma: no cover - depends on the lmms-eval version

    def register_model(*names):
        return lambda cls: cls


try:  # lmms-eval 0.7: results are unwrapped (and non-strings stringified) unless they come in a GenerationResult
    from lmms_eval.api.instance import GenerationResult
except ImportError:  # pragma: no cover - older lmms-eval keeps what the model returns
    GenerationResult = None


def as_result(pair: tuple[float, bool]):
    """A `(loss, is_greedy)` pair in the form the installed lmms-eval's evaluator hands to the task unchanged."""
    return GenerationResult(text=pair) if GenerationResult is not None else pair


@register_model("langbridge")
class LangBridge(lmms):
    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        trust_remote_code: bool = True,
        attn_implementation: str | None = None,
        use_kernels: bool | str | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise LangBridgeUsageError(
                f"unknown model_args for langbridge: {sorted(kwargs)}; known: pretrained, device, dtype, "
                "batch_size, trust_remote_code, attn_implementation, use_kernels"
            )
        self.runner = HarnessRunner(
            pretrained,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            use_kernels=use_kernels,
        )
        self.batch_size_per_gpu = int(batch_size)
        self._rank, self._world_size = 0, 1

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    def visuals_of(self, doc_to_visual, doc_id, task, split) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [v for v in (visuals if isinstance(visuals, list) else [visuals]) if v is not None]
        for visual in visuals:
            if not hasattr(visual, "convert"):
                raise TypeError(
                    f"task {task!r}: doc_to_visual gave a {type(visual).__name__}; the langbridge model takes PIL "
                    "images (an Image feature, or a doc_to_visual function that opens the files)"
                )
        return visuals

    def generate_until(self, requests) -> list[str]:
        """Greedy (or sampled) replies, batched among requests with the same generation settings: several tasks'
        requests arrive in one list, each task with its own `until` and `max_new_tokens`."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        replies = [None] * len(requests)
        progress = tqdm(total=len(requests), desc="langbridge: generating", disable=self.rank != 0)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                args = [requests[i].args for i in chunk]
                gen_kwargs = dict(args[0][1])
                until = gen_kwargs.pop("until", None) or []
                answers = self.runner.generate(
                    [a[0] for a in args],
                    [self.visuals_of(*a[2:6]) for a in args],
                    gen_kwargs,
                    stops=[until] if isinstance(until, str) else until,
                )
                for i, answer in zip(chunk, answers):
                    replies[i] = answer
                progress.update(len(chunk))
        progress.close()
        return replies

    def scored_text(self, args: tuple) -> tuple[str, str, list]:
        """Context, continuation and images of a loglikelihood request, in each form lmms-eval sends:

        - `(context, continuation, doc_to_visual, doc_id, task, split)`: `multiple_choice` (a request per choice);
        - `(context, doc_to_target, doc_to_visual, doc_id, task, split)`: `output_type: loglikelihood`;
        - `(context, continuation)`: the unconditional request `acc_mutual_info` adds per choice (no document,
          no image; the context is empty).
        """
        if len(args) == 2:
            context, continuation = args
            return context, continuation, []
        context, target, doc_to_visual, doc_id, task, split = args
        continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
        if not isinstance(continuation, str):
            raise TypeError(f"task {task!r}: the target to score is a {type(continuation).__name__}, not text")
        return context, continuation, self.visuals_of(doc_to_visual, doc_id, task, split)

    def loglikelihood(self, requests) -> list:
        """lmms-eval's convention, as its `llava` and `llava_hf` return it: `(loss, is_greedy)` per request, the loss
        being the mean negative log-probability of the continuation's tokens (lower is likelier: `multiple_choice`
        picks the `argmin`), wrapped for lmms-eval 0.7's evaluator (see `as_result`)."""
        results = []
        for request in tqdm(requests, desc="langbridge: scoring", disable=self.rank != 0):
            log_probs, greedy = self.runner.continuation_log_probs(*self.scored_text(request.args))
            loss = -log_probs.mean().item() if log_probs.numel() else 0.0
            results.append(as_result((loss, greedy)))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("multi-round generation is not supported by the langbridge plugin")
