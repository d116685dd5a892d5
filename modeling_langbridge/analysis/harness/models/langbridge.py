"""The lmms-eval model class: `lmms-eval --model langbridge --model_args pretrained=DIR,batch_size=8 --tasks ...`.

Needs lmms-eval (the `lmms-eval` extra; it requires torchvision). The work itself is `HarnessRunner`'s; this
class only speaks lmms-eval's request protocol.
"""

from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ..runner import HarnessRunner

try:  # lmms-eval's registry, where this version has one; the plugin hook finds the class either way
    from lmms_eval.api.registry import register_model
except ImportError:  # pragma: no cover - depends on the lmms-eval version

    def register_model(*names):
        return lambda cls: cls


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
            raise ValueError(
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
        return [v for v in (visuals if isinstance(visuals, list) else [visuals]) if v is not None]

    def generate_until(self, requests) -> list[str]:
        replies = []
        for start in tqdm(
            range(0, len(requests), self.batch_size), desc="langbridge: generating", disable=self.rank != 0
        ):
            chunk = [request.args for request in requests[start : start + self.batch_size]]
            contexts = [args[0] for args in chunk]
            gen_kwargs = dict(chunk[0][1])
            until = gen_kwargs.pop("until", None) or []
            visuals = [self.visuals_of(*args[2:6]) for args in chunk]
            replies += self.runner.generate(
                contexts, visuals, gen_kwargs, stops=[until] if isinstance(until, str) else until
            )
        return replies

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = []
        for request in tqdm(requests, desc="langbridge: scoring", disable=self.rank != 0):
            context, target, doc_to_visual, doc_id, task, split = request.args
            document = self.task_dict[task][split][doc_id]
            continuation = target if isinstance(target, str) else target(document)
            results.append(
                self.runner.loglikelihood(context, continuation, self.visuals_of(doc_to_visual, doc_id, task, split))
            )
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("multi-round generation is not supported by the langbridge plugin")
