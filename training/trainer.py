"""TRL's SFTTrainer with what LangBridge training adds: learning rates per part, a float32 projector under
QLoRA, padding-free and packed batches of image-text samples (training/packing.py), and the data report at the end."""

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from datasets import Dataset
from transformers import Trainer
from trl import SFTTrainer

from modeling_langbridge.errors import LangBridgeUsageError
from modeling_langbridge.files import atomic_file, write_text_atomic

from .caption_words import CaptionWordLoss, coefficient_spread
from .data import DataReport
from .outputs import files_written_whole
from .packing import Packing


class LangBridgeTrainer(SFTTrainer):
    def __init__(
        self,
        *args,
        projector_lr: float | None = None,
        vision_tower_lr: float | None = None,
        data_report: DataReport | None = None,
        image_loader=None,
        caption_word_loss: float = 0.0,
        coefficient_spread_loss: float = 0.0,
        **kwargs,
    ):
        self.projector_lr = projector_lr
        self.vision_tower_lr = vision_tower_lr
        self.data_report = data_report or DataReport()
        self.image_loader = image_loader
        training_args = kwargs["args"]
        training_args.remove_unused_columns = False  # the collator needs the messages and images
        training_args.assistant_only_loss = False  # the collator decides what is learned, template or not
        self.packing = packing_asked(training_args, kwargs.get("data_collator"))
        # TRL 1.16 refuses both for vision datasets (and a custom collator with padding_free); the collator packs
        training_args.packing = training_args.padding_free = False
        with peft_reads_old_checkpointing_name():
            super().__init__(*args, **kwargs)
        self.keep_float32_master_weights()
        # stage 1's optional losses on LangBridge's coefficients (caption_words.py), by their weights
        self.coefficient_losses = {
            name: weight
            for name, weight in (
                ("caption_word_loss", caption_word_loss),
                ("coefficient_spread_loss", coefficient_spread_loss),
            )
            if weight
        }
        model = self.accelerator.unwrap_model(self.model)
        self.caption_words = CaptionWordLoss(model) if self.coefficient_losses else None
        self.tokenizer_state = tokenizer_call_state(self.processing_class)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, plus the coefficient losses asked for (`caption_words.py`), each times its weight. A packed
        batch's `sample_spans` (where each sample lies in its row) stay out of the model's inputs."""
        spans = inputs.pop("sample_spans", None)
        loss = self._loss(model, inputs, return_outputs, num_items_in_batch, spans)
        if spans is not None and self.model.training:
            self.count_packed_tokens(inputs, spans)
        return loss

    def count_packed_tokens(self, inputs: dict, spans: torch.Tensor) -> None:
        """TRL counts a batch without `attention_mask` as one row of `position_ids.size(1)` tokens (its padding-free
        layout); a packed batch may have several rows, padded at their ends: count its samples' tokens instead, as
        TRL counts a padded batch's (the `num_tokens` metric)."""
        difference = spans[:, 2].sum() - inputs["position_ids"].size(1)
        difference = self.accelerator.gather_for_metrics(difference.reshape(1)).sum().item()
        self._total_train_tokens += difference // self._tp_size
        self._metrics["train"]["num_tokens"] = [self._total_train_tokens]

    def _loss(self, model, inputs, return_outputs, num_items_in_batch, spans):
        if self.caption_words is None or return_outputs or not model.training:  # a training step's loss only
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        with self.caption_words.capture():
            loss = super().compute_loss(model, inputs, False, num_items_in_batch)
        coefficients = self.caption_words.captured_coefficients()
        if coefficients is None:
            return loss
        for name, weight in self.coefficient_losses.items():
            if name == "caption_word_loss":
                term = self.caption_words.words(coefficients, labels, spans)
                if term is None:  # no caption word in the shared vocabulary
                    continue
            else:
                term = coefficient_spread(coefficients)
            self._metrics["train"][name].append(term.item())
            if self.loss_scaled_over_accumulation(num_items_in_batch):  # as the caption loss is, so are these
                term = term / getattr(self, "current_gradient_accumulation_steps", 1)
            loss = loss + weight * term
        return loss

    def loss_scaled_over_accumulation(self, num_items_in_batch) -> bool:
        """Whether the Trainer leaves the loss undivided by the accumulation steps (it was normalised by the
        tokens of the whole accumulated batch), transformers' own test."""
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return self.loss_is_scaled_for_ga
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def keep_float32_master_weights(self) -> None:
        """Trainable parameters in float32, the frozen ones as loaded; the final save casts back to the load dtype.

        A bf16 weight updated in place by AdamW at lr 2e-5 mostly does not change at all: the update is below half
        a bf16 step for all but the smallest weights. So under `bf16`/`fp16` (autocast: the matmuls still run in
        half precision) every trainable parameter (the LLM in full SFT, LoRA adapters, the projector, a trainable
        vision tower) is upcast to a float32 master copy. The projector and a trainable vision tower are upcast in
        any case (TRL casts the trainable parameters of a quantized model to bf16). DeepSpeed keeps its own float32
        master copy of its bf16 weights, so nothing is upcast under it; FSDP2 (accelerate) upcasts the trainable
        parameters itself, which this does first."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        self.load_dtype = getattr(unwrapped, "dtype", None)  # the dtype asked for (`dtype` in the recipe)
        self.saved_dtypes = {
            name: tensor.dtype for name, tensor in self.model.state_dict().items() if tensor.is_floating_point()
        }
        if self.is_deepspeed_enabled:
            return
        mixed_precision = self.args.bf16 or self.args.fp16
        for name, parameter in self.model.named_parameters():
            if (
                parameter.requires_grad
                and parameter.is_floating_point()
                and parameter.dtype != torch.float32
                and (mixed_precision or "multi_modal_projector" in name or "vision_tower" in name)
            ):
                parameter.data = parameter.data.float()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints (`_internal_call`) keep the float32 master weights, so a resumed run equals an uninterrupted
        one; the final save has the dtype the model was loaded with."""
        self._final_save = not _internal_call
        try:
            super().save_model(output_dir, _internal_call=_internal_call)
        finally:
            self._final_save = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The final save is written whole: into a scratch folder, then each file swapped in (`files_written_whole`),
        so a save that fails (a full disk) leaves the folder's previous weights as they were."""
        restore_tokenizer_call_state(self.processing_class, self.tokenizer_state)
        with saved_as_its_own_class(self.accelerator.unwrap_model(self.model)):
            if not getattr(self, "_final_save", False):
                return super()._save(output_dir, state_dict=state_dict)
            if not self.args.should_save:  # a rank that writes nothing, here only for collective gathers
                return self._save_in_load_dtypes(output_dir, state_dict)
            with files_written_whole(output_dir or self.args.output_dir) as scratch:
                self._save_in_load_dtypes(str(scratch), state_dict)

    def save_state(self) -> None:
        """trainer_state.json (the step and log history), written whole."""
        if self.is_world_process_zero():
            with atomic_file(Path(self.args.output_dir) / "trainer_state.json", overwrite=True) as scratch:
                self.state.save_to_json(str(scratch))

    def _save_in_load_dtypes(self, output_dir: str | None, state_dict: dict | None) -> None:
        if state_dict is None and any(
            self.saved_dtypes.get(name, tensor.dtype) != tensor.dtype for name, tensor in self.model.named_parameters()
        ):
            state_dict = self.model.state_dict()
        if state_dict:
            state_dict = self.in_saved_dtypes(state_dict)
        super()._save(output_dir, state_dict=state_dict)
        model = self.accelerator.unwrap_model(self.model)
        if (
            self.args.should_save
            and self.load_dtype is not None
            and hasattr(model, "config")
            and not hasattr(model, "peft_config")
        ):
            # save_pretrained names the dtype of the first parameter, a float32 master weight if it is trainable
            model.config.dtype = self.load_dtype
            model.config.save_pretrained(output_dir or self.args.output_dir)

    def in_saved_dtypes(self, state_dict: dict) -> dict:
        """The state dict with each floating tensor in the dtype it was loaded with (tied tensors stay tied)."""
        cast, done = {}, {}
        for name, tensor in state_dict.items():
            dtype = self.saved_dtypes.get(name)
            if dtype is None or tensor.dtype == dtype or not tensor.is_floating_point():
                cast[name] = tensor
                continue
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), dtype)
            if key not in done:
                done[key] = tensor.to(dtype)
            cast[name] = done[key]
        return cast

    def _get_train_sampler(self, train_dataset=None):
        """transformers' sampler, given the items' token counts measured before training when it groups by length
        (`train_sampling_strategy: group_by_length` or `batch_rebalance`): it would otherwise read them from the
        dataset, whose items open their images when read."""
        lengths = getattr(self.image_loader, "lengths", None)
        grouped = self.args.train_sampling_strategy in ("group_by_length", "batch_rebalance")
        if grouped and lengths is not None and (train_dataset is None or train_dataset is self.train_dataset):
            train_dataset = Dataset.from_dict({self.args.length_column_name: lengths})
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None):
        """AdamW (or the configured optimizer) with the projector and the vision tower at their own rates."""
        if self.optimizer is not None:
            return self.optimizer
        model = model or self.model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            rate = self.args.learning_rate
            if "multi_modal_projector" in name and self.projector_lr is not None:
                rate = self.projector_lr
            elif "vision_tower" in name and self.vision_tower_lr is not None:
                rate = self.vision_tower_lr
            weight_decay = self.args.weight_decay if name in decay else 0.0
            groups.setdefault((rate, weight_decay), []).append(parameter)
        optimizer_class, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_class(
            [{"params": params, "lr": rate, "weight_decay": wd} for (rate, wd), params in groups.items()],
            **optimizer_kwargs,
        )
        return self.optimizer

    def report_data(self) -> str:
        """The data summary, printed and saved as data_report.json in the output folder."""
        if self.image_loader is not None:
            self.data_report.skipped_bad_images = self.image_loader.skipped
        summary = self.data_report.summary()
        if self.is_world_process_zero():
            print(f"Data: {summary}")
            write_text_atomic(
                Path(self.args.output_dir) / "data_report.json",
                json.dumps(self.data_report.to_dict(), indent=2),
                overwrite=True,
            )
        return summary


def packing_asked(training_args, collator) -> Packing:
    """The layout of the collator's batches, which must be what the settings ask (`padding_free`, `packing`)."""
    asked = training_args.packing or training_args.padding_free
    packing = getattr(collator, "packing", None) or Packing()
    if bool(asked) != packing.on:
        setting = "packing" if training_args.packing else "padding_free"
        raise LangBridgeUsageError(
            f"{setting} is {bool(asked)} but the data collator builds {packing.mode} batches: build the data and the "
            "collator for it (prepare_training_data and LangBridgeCollator with packing=packing_of(training_args, "
            "model_args).for_model(model)), as the recipes do."
        )
    return packing


@contextmanager
def peft_reads_old_checkpointing_name():
    """PEFT 0.21 (wrapping a model for LoRA, or loading an adapter) reads `is_gradient_checkpointing`, which
    transformers 5.25 deprecates with a FutureWarning about PEFT's code, not the recipe's settings: that warning alone
    is ignored here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _backend(processing_class):
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    return getattr(tokenizer, "_tokenizer", None) if hasattr(tokenizer, "backend_tokenizer") else None


def tokenizer_call_state(processing_class) -> tuple | None:
    """The truncation and padding a fast tokenizer's backend holds (normally none), as loaded."""
    backend = _backend(processing_class)
    return None if backend is None else (backend.truncation, backend.padding)


def restore_tokenizer_call_state(processing_class, state: tuple | None) -> None:
    """A fast tokenizer keeps the truncation and padding of its last call (the collator's max_length) in its backend,
    and `save_pretrained` writes them into tokenizer.json: every later call on the saved folder would default to the
    recipe's max_length (and warn "`max_length` is ignored when `padding`=`True`"). Put back the state it was loaded
    with before saving."""
    backend = _backend(processing_class)
    if backend is None or state is None:
        return
    truncation, padding = state
    if truncation is None:
        backend.no_truncation()
    else:
        backend.enable_truncation(**truncation)
    if padding is None:
        backend.no_padding()
    else:
        backend.enable_padding(**padding)


@contextmanager
def saved_as_its_own_class(model):
    """FSDP2 turns a model's class into a subclass `FSDP<name>` defined in torch; transformers then writes torch's
    FSDP sources into the folder in place of the model's code and points `auto_map` at them, and the folder no longer
    loads with `trust_remote_code`. Save it as its own class (the sharded parameters and hooks are untouched)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        FSDPModule = ()
    if not FSDPModule or not isinstance(model, FSDPModule):
        yield
        return
    fsdp_class = type(model)
    model.__class__ = next(base for base in fsdp_class.__bases__ if base is not FSDPModule)
    try:
        yield
    finally:
        model.__class__ = fsdp_class
