"""Optional stage-1 losses on LangBridge's coefficients: name the caption's words, mix few words per token.

The demo's transfer study measured why a LangBridge adapter pretrained on one LLM does not caption on another
before SFT: with visual tokens that are exactly the scene's words, the other LLM captions; the trained coefficients
do not name those words. This loss is the remedy the study tried: for each image, the mean of its visual tokens'
coefficients over the patches, read as a distribution over the shared vocabulary, should give its caption's words
(those in the shared vocabulary) a high probability. It made the coefficients name the words, yet each visual
token still mixed about 30 of the 48 shared words in LLM-1's geometry; the coefficient-spread loss asks each token to
mix few (`coefficient_spread`), so that it stays close to words another LLM knows. Both are off by default (the
paper trains stage 1 on captions alone).
"""

import math
from contextlib import contextmanager

import torch

from modeling_langbridge.errors import LangBridgeUsageError

from .packing import sample_labels

# Each loss's weight beside the caption loss: 0 is off; the study's caption-word remedy is 0.1. All are a few nats, so a
# weight above 100 leaves the caption loss nothing to say, and very large ones overflow the gradient norm (1e30 trained
# a projector of NaN).
MAX_WEIGHT = 100.0


# Stage 1's optional losses on the coefficients, by setting name (recipes, the demo, the trainer's logged metrics).
LOSSES = ("caption_word_loss", "coefficient_spread_loss")

ACCEPTED = f"0 (off) or a weight above 0 and at most {MAX_WEIGHT:g}, such as 0.1 (the study's remedy)"


def check_weight(value, setting: str = "caption_word_loss", source: str | None = None) -> float:
    """The weight of a stage-1 coefficient loss, refused (SettingError) unless a finite number from 0 to MAX_WEIGHT."""
    from .arguments import SettingError

    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not finite or not 0 <= value <= MAX_WEIGHT:
        accepted = ACCEPTED if setting == "caption_word_loss" else ACCEPTED.replace(" (the study's remedy)", "")
        raise SettingError(setting, value, accepted, source)
    return float(value)


def coefficient_spread(coefficients: torch.Tensor) -> torch.Tensor:
    """Over how many shared words each visual token spreads, as the mean log of its effective number of tokens
    (participation ratio of |c|, `transfer_diagnosis`'s `effective_tokens`): 0 when every token is one word's
    embedding times a scale, log T when spread evenly. Scale-free, so it asks for few words, not small ones (its
    gradient never shrinks the coefficients); for raw logits and softmax alike. It keeps [images, patches, T] float32
    tensors for the backward pass, as the coefficients themselves are: at 576 patches and T = 19,200, 44 MB an image."""
    c = coefficients.float()
    effective = c.abs().sum(-1).pow(2) / c.pow(2).sum(-1).clamp_min(1e-12)
    return effective.clamp_min(1.0).log().mean()


class CaptionWordLoss:
    """Keeps the coefficients of the images a forward pass projected (`capture`), for both stage-1 losses, and
    scores them against the labels' words."""

    def __init__(self, model):
        self.projector = model.model.multi_modal_projector
        self.features = []
        token_ids = self.projector.vocab_token_ids
        self.row_of_token = torch.full((int(token_ids.max()) + 1,), -1, dtype=torch.long, device=token_ids.device)
        self.row_of_token[token_ids] = torch.arange(len(token_ids), device=token_ids.device)

    @contextmanager
    def capture(self):
        """Keep the projector's input (the images' features) of the forward passes run inside."""
        self.features = []
        handle = self.projector.register_forward_pre_hook(lambda module, args: self.features.append(args[0]))
        try:
            yield
        finally:
            handle.remove()

    def captured_coefficients(self) -> torch.Tensor | None:
        """The coefficients [images, patches, T] of the images the forward passes inside `capture` projected (None
        without images), computed again from their features, with gradients to the projector."""
        features, self.features = self.features, []
        if not features:
            return None
        features = torch.cat([f.reshape(-1, *f.shape[-2:]) for f in features])  # [images, patches, Dv]
        return self.projector.coefficients(features).float()

    def __call__(self, labels: torch.Tensor, spans: torch.Tensor | None = None) -> torch.Tensor | None:
        """The loss of the forward pass just run (`labels` [B, L], one image per sample); None without words. A
        packed batch gives its `sample_spans` (row, start, length): its images follow those samples in order."""
        coefficients = self.captured_coefficients()
        return None if coefficients is None else self.words(coefficients, labels, spans)

    def words(self, coefficients: torch.Tensor, labels: torch.Tensor, spans: torch.Tensor | None = None):
        """The caption-word loss of these coefficients [images, patches, T] against the labels' words."""
        samples = sample_labels(labels, spans)
        if coefficients.shape[0] != len(samples):
            raise LangBridgeUsageError(
                f"caption_word_loss needs one image per sample (stage-1 captions); this batch has "
                f"{coefficients.shape[0]} images for {len(samples)} samples. Set caption_word_loss: 0 for this data."
            )
        if self.projector.coefficient_activation == "softmax":
            log_probabilities = coefficients.mean(dim=1).clamp_min(1e-12).log()
        else:  # raw logits: their mean over the patches, read as logits
            log_probabilities = coefficients.mean(dim=1).log_softmax(dim=-1)
        losses = []
        for sample, its_labels in enumerate(samples):
            ids = its_labels[(its_labels >= 0) & (its_labels < len(self.row_of_token))]
            rows = self.row_of_token.to(ids.device)[ids].unique()
            rows = rows[rows >= 0]
            if len(rows):
                losses.append(-log_probabilities[sample, rows.to(log_probabilities.device)].mean())
        return torch.stack(losses).mean() if losses else None
