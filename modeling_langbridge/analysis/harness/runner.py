"""What an evaluation harness asks of a VLM, for any model folder the Auto classes load."""

import torch
from PIL import Image

from ...errors import LangBridgeUsageError
from ...model.modeling_langbridge import hub_kernels_wanted


def greedy_settings(gen_kwargs: dict) -> dict:
    """A harness's generation settings as `generate` takes them; temperature 0 means greedy."""
    settings = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens", 128))}
    temperature = float(gen_kwargs.get("temperature", 0) or 0)
    if temperature > 0 or gen_kwargs.get("do_sample"):
        settings.update(do_sample=True, temperature=temperature or 1.0)
        if gen_kwargs.get("top_p") is not None:
            settings["top_p"] = float(gen_kwargs["top_p"])
    else:
        settings["do_sample"] = False
    if gen_kwargs.get("num_beams"):
        settings["num_beams"] = int(gen_kwargs["num_beams"])
    return settings


def kernels_setting(value: bool | str | None) -> bool | None:
    """`use_kernels` as a harness passes model_args (a bool, or its text: lmms-eval may hand over "False")."""
    if value is None or isinstance(value, bool):
        return value
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if str(value).strip().lower() not in words:
        raise LangBridgeUsageError(
            f"use_kernels={value!r}: give True or False (or leave it out: kernels only when online)"
        )
    return words[str(value).strip().lower()]


def cut_at_stops(text: str, stops: list[str]) -> str:
    """The text up to the first stop string (a harness's `until`)."""
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


class HarnessRunner:
    """Loads a model folder once and answers prompts about images the way harnesses expect."""

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str | torch.dtype = "auto",
        trust_remote_code: bool = True,
        attn_implementation: str | None = None,
        use_kernels: bool | str | None = None,
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        self.model = (
            AutoModelForImageTextToText.from_pretrained(
                pretrained,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                attn_implementation=attn_implementation,
                use_kernels=hub_kernels_wanted(kernels_setting(use_kernels)),
            )
            .to(device)
            .eval()
        )
        self.processor = AutoProcessor.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        self.processor.tokenizer.padding_side = "left"  # batched generation continues from the right edge
        self.device = torch.device(device)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def prompt(self, context: str, images: int, answer: str | None = None) -> str:
        """The chat template around a harness's context: the images first, as LLaVA-style tasks expect."""
        content = [{"type": "image"} for _ in range(images)] + [
            {"type": "text", "text": context.replace("<image>", "").strip()}
        ]
        messages = [{"role": "user", "content": content}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=answer is None)

    def inputs(self, texts: list[str], images: list[Image.Image]):
        batch = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        return batch.to(self.device)

    def generate(
        self,
        contexts: list[str],
        visuals: list[list[Image.Image]],
        gen_kwargs: dict | None = None,
        stops: list[str] | None = None,
    ) -> list[str]:
        """One reply per context; `visuals[i]` are the images of context i."""
        gen_kwargs = dict(gen_kwargs or {})
        texts = [self.prompt(c, len(v)) for c, v in zip(contexts, visuals)]
        images = [image.convert("RGB") for v in visuals for image in v]
        batch = self.inputs(texts, images)
        with torch.no_grad():
            output = self.model.generate(
                **batch, **greedy_settings(gen_kwargs), pad_token_id=self.tokenizer.pad_token_id
            )
        replies = self.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return [cut_at_stops(reply, stops or []).strip() for reply in replies]

    def continuation_log_probs(
        self, context: str, continuation: str, visuals: list[Image.Image]
    ) -> tuple[torch.Tensor, bool]:
        """The log-probability of each token of `continuation` after `context` (the chat prompt around it), and
        whether greedy decoding gives the whole continuation."""
        images = [image.convert("RGB") for image in visuals]
        text = self.prompt(context, len(images))
        prompt = self.inputs([text], images)
        full = self.inputs([text + continuation], images)
        start = prompt["input_ids"].shape[1]
        with torch.no_grad():
            logits = self.model(**full).logits[0, start - 1 : -1].float()
        targets = full["input_ids"][0, start:]
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
        return log_probs, bool((logits.argmax(-1) == targets).all())

    def loglikelihood(self, context: str, continuation: str, visuals: list[Image.Image]) -> tuple[float, bool]:
        """Sum of log-probabilities of `continuation` after `context` (higher is likelier, lm-eval's convention),
        and whether greedy decoding gives it. lmms-eval's plugin turns this into a loss: see `models/langbridge.py`."""
        log_probs, greedy = self.continuation_log_probs(context, continuation, visuals)
        return log_probs.sum().item(), greedy
