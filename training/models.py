"""Loading a LangBridge model for a training stage: what is frozen, what is quantized, where LoRA goes.

Stage 1 (`pretrain`): vision tower and LLM frozen, the projector alone learns.
Stage 2 (`sft`): projector + LLM, the LLM trained fully, with LoRA (`use_peft`), or with QLoRA (`use_peft` and
`load_in_4bit`: the LLM in 4-bit, vision tower, projector and head unquantized). The vision tower can be
unfrozen with its own learning rate, as LLaVA-NeXT does.
"""

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig
from transformers.utils import logging

import modeling_langbridge  # noqa: F401  (registers the Auto classes)
from modeling_langbridge.assembly.compose import compose
from modeling_langbridge.assembly.hub_configs import derived_differences, read_hub_config
from modeling_langbridge.errors import LangBridgeUsageError, loading
from modeling_langbridge.model.modeling_langbridge import hub_kernels_wanted

logger = logging.get_logger(__name__)

LLM_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Full module paths: bitsandbytes matches skip modules by name, and these must stay in full precision.
UNQUANTIZED_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


def resolve_model(model_name_or_path: str, output_dir: str, use_kernels: bool | None = None) -> str:
    """A model folder to train: the path itself, or, for a hub_configs pair, the two models composed first."""
    path = Path(model_name_or_path)
    if path.suffix != ".json":
        return model_name_or_path
    composed_dir = Path(output_dir) / "composed"
    if not (composed_dir / "config.json").exists():
        settings = read_hub_config(path)
        if not {"vision_model", "language_model"} <= set(settings):
            raise LangBridgeUsageError(
                f"{path} must name both models (vision_model_name_or_path and "
                "language_model_name_or_path) to be composed for training."
            )
        composed = compose(
            settings.pop("vision_model"), settings.pop("language_model"), use_kernels=use_kernels, **settings
        )
        for note in derived_differences(path, composed.model.config):
            logger.warning(note)
        composed.save(composed_dir)
    return str(composed_dir)


def quantization_config(model_args) -> BitsAndBytesConfig | None:
    if not model_args.load_in_4bit:
        return None
    compute_dtype = torch.float32 if model_args.dtype in (None, "auto", "float32") else getattr(torch, model_args.dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=UNQUANTIZED_MODULES,
    )


def load_for_stage(model_args, stage: str, train_vision_tower: bool, output_dir: str, use_kernels: bool | None = None):
    """The model and processor, with `requires_grad` set for the stage (PEFT later freezes the LLM for LoRA)."""
    path = resolve_model(model_args.model_name_or_path, output_dir, use_kernels)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    kwargs = {
        "dtype": dtype,
        "attn_implementation": model_args.attn_implementation,
        "use_kernels": hub_kernels_wanted(use_kernels),
    }
    if stage == "sft" and (quantization := quantization_config(model_args)) is not None:
        kwargs["quantization_config"] = quantization
    with loading("model to train (model_name_or_path)", path):  # a folder that is not a model: one sentence
        model = AutoModelForImageTextToText.from_pretrained(path, **{k: v for k, v in kwargs.items() if v is not None})
        processor = AutoProcessor.from_pretrained(path)
    if getattr(model, "is_loaded_in_4bit", False):
        keep_4bit_trainable_on_cpu(model)

    model.requires_grad_(stage == "sft" and not model_args.use_peft)
    model.model.multi_modal_projector.requires_grad_(True)
    if getattr(model.model, "image_newline", None) is not None:  # tiling's row end learns with the projector
        model.model.image_newline.requires_grad_(True)
    model.model.vision_tower.requires_grad_(stage == "sft" and train_vision_tower)
    return model, processor


def keep_4bit_trainable_on_cpu(model) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights during an eval pass, after which LoRA
    training breaks (gradients stop, or an in-place error). Keep the trainable layout."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def lora_config(model_args, train_vision_tower: bool):
    """LoRA on the LLM only (a plain list of names would also hit CLIP's q_proj/v_proj); the projector, and a
    trainable vision tower, are trained in full and saved with the adapter."""
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    layers = model_args.lora_target_modules or LLM_LINEAR_LAYERS
    layers = [layers] if isinstance(layers, str) else list(layers)
    is_regex = len(layers) == 1 and any(char in layers[0] for char in "*()|")
    target = layers[0] if is_regex else rf".*language_model.*\.({'|'.join(layers)})"
    modules_to_save = [
        "multi_modal_projector",
        *(["vision_tower"] if train_vision_tower else []),
        *(model_args.lora_modules_to_save or []),
    ]
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=target,
        modules_to_save=modules_to_save,
        task_type=None,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
    )
