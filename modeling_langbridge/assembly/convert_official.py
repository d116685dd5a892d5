"""Convert checkpoints of the official LangBridge code (CurryX-001/LangBridge, a LLaVA fork).

Its projector is `mm_projector_type == "mm_vocab"`: `nn.Sequential(Linear(Dv, H), GELU, Linear(H, H),
Linear(H, T))`, saved as `model.mm_projector.{0,2,3}.*`; visual tokens are `projector(features).float() @ E`,
with `E` a matrix file (`mm_vocab_matrix`) holding the base LLM's embeddings of the vocabulary ids listed in
a JSON file (token -> id). Converted models keep those numerics: raw logits, the combination in float32.
"""

import ast
import dataclasses
import json
import re
from pathlib import Path

import torch
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
)
from transformers.initialization import no_init_weights
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..errors import LangBridgeUsageError, loading
from ..files import load_torch_weights, read_checkpoint_tensors, read_tensor_file
from ..model.configuration_langbridge import CLIP_VIT_L_336, LangBridgeConfig
from ..model.processing_langbridge import LangBridgeProcessor
from .adapter import AdapterFacts, LangBridgeAdapter
from .chat_templates import chat_format_for
from .compose import (
    Composed,
    assemble,
    fit_embeddings,
    load_vision_tower,
    prepare_tokenizer,
    tiled_image_processor,
    tiling_settings,
    vision_config_of,
)
from .vocab import SharedVocabulary, VocabularyMapping, read_official_vocabulary

OFFICIAL_VISION_TOWER = "openai/clip-vit-large-patch14-336"
OFFICIAL_LAYERS = {"0": "linear_1", "2": "linear_2", "3": "vocab_proj"}
LLM_FAMILIES = {"llava_qwen": "qwen2", "llava_llama": "llama", "llava_mistral": "mistral"}
# The official conversation templates' system prompts (llava/conversation.py), by LLM family.
OFFICIAL_SYSTEM_PROMPTS = {
    "qwen2": "You are a helpful assistant.",
    "llama": "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
}
VISION_PREFIX = "model.vision_tower.vision_tower."
UNUSED_PREFIXES = ("model.image_newline", "model.vision_resampler.", "model.mm_projector.", VISION_PREFIX)


def official_projector_weights(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Our projector's weights from the official `mm_projector.{0,2,3}.{weight,bias}` keys."""
    found = {key.split("mm_projector.", 1)[1]: value for key, value in state.items() if "mm_projector." in key}
    expected = [f"{index}.{kind}" for index in OFFICIAL_LAYERS for kind in ("weight", "bias")]
    missing = [key for key in expected if key not in found]
    if missing:
        raise LangBridgeUsageError(
            f"{source} lacks the official projector weights {['mm_projector.' + k for k in missing]} (found "
            f"{sorted(found) or sorted(state)[:6]}). An mm_vocab projector has Linear layers 0, 2 and 3."
        )
    return {f"{OFFICIAL_LAYERS[key.split('.')[0]]}.{key.split('.')[1]}": found[key].float() for key in expected}


def convert_projector(
    projector_file: str | Path,
    vocab_file: str | Path,
    *,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str = "default",
    vision_model: str = OFFICIAL_VISION_TOWER,
    trained_with: str | None = None,
) -> LangBridgeAdapter:
    """A stage-1 `mm_projector.bin` + its vocabulary JSON -> our adapter (official vision defaults)."""
    weights = official_projector_weights(read_tensor_file(projector_file), str(projector_file))
    vocabulary = SharedVocabulary.from_official(vocab_file)
    vocabulary.source.pop("official_ids", None)  # ids are the training LLM's; the adapter keeps strings only
    facts = AdapterFacts(
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        coefficient_activation="none",
        combine_in_float32=True,
        vision_model_name_or_path=vision_model,
        trained_with=trained_with,
    )
    return LangBridgeAdapter(weights, vocabulary, facts)


def llm_family(config: dict) -> str:
    model_type = config.get("model_type", "")
    if model_type in LLM_FAMILIES:
        return LLM_FAMILIES[model_type]
    architecture = " ".join(config.get("architectures") or []).lower()
    for family in ("qwen", "llama", "mistral"):
        if family in architecture:
            return LLM_FAMILIES[f"llava_{family}"]
    raise LangBridgeUsageError(
        f"Cannot tell the LLM family of model_type {model_type!r} / architectures {config.get('architectures')}."
    )


def text_config_of(config: dict, family: str):
    """The LLM's own config from the official combined config.json (LLaVA keys dropped)."""
    config_class = CONFIG_MAPPING[family]
    known = {f.name for f in dataclasses.fields(config_class)} | {"rope_theta", "rope_scaling", "torch_dtype"}
    return config_class(**{k: v for k, v in config.items() if k in known and k not in ("model_type", "architectures")})


def official_vision_parts(name: str, aspect_ratio: str):
    """The vision config and image processor; the official CLIP ViT-L/14-336 is known without the Hub."""
    try:
        vision_config = vision_config_of(name)
        with loading("image processor of the vision model", name):
            image_processor = AutoImageProcessor.from_pretrained(name)
    except LangBridgeUsageError as error:
        if name != OFFICIAL_VISION_TOWER or not isinstance(error.__cause__, OSError):
            raise
        vision_config = CLIPVisionConfig(**CLIP_VIT_L_336)
        image_processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    if aspect_ratio == "pad":  # LLaVA-1.5 SFT: pad to a square of the mean colour, then resize
        from transformers import LlavaImageProcessor

        settings = {
            k: v
            for k, v in image_processor.to_dict().items()
            if k in ("size", "crop_size", "image_mean", "image_std", "resample")
        }
        image_processor = LlavaImageProcessor(do_pad=True, **settings)
    return vision_config, image_processor


def convert_checkpoint(
    checkpoint: str | Path,
    vocab_file: str | Path,
    *,
    vocab_matrix: str | Path | None = None,
    vision_model: str | None = None,
    tiling: bool = True,
    use_kernels: bool | None = None,
) -> Composed:
    """A full official checkpoint folder (LLaVA-1.5 or LLaVA-NeXT layout) -> our full model.

    A LLaVA-NeXT checkpoint trained with anyres tiling converts tiled, with its grid and `image_newline`;
    `tiling=False` (`--no-tiling`) converts it for a single view instead, which the official code never ran.
    `use_kernels`: Hub kernels for the vision tower when it is loaded by name (the rest is built from tensors)."""
    checkpoint = Path(checkpoint)
    config_file = checkpoint / "config.json"
    if not config_file.exists():
        raise LangBridgeUsageError(f"{checkpoint} has no config.json: not a checkpoint folder of the official code.")
    try:
        official = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LangBridgeUsageError(f"{config_file} is not a UTF-8 JSON file ({error}); download it again.") from None
    projector_type = official.get("mm_projector_type") if isinstance(official, dict) else None
    if projector_type != "mm_vocab":
        raise LangBridgeUsageError(
            f"{checkpoint} has mm_projector_type={projector_type!r}, not 'mm_vocab': not a LangBridge checkpoint of the "
            "official code."
        )
    tiled = official_tiling(official, checkpoint)
    notes = ["converted from the official code: raw-logit coefficients, combination in float32"]
    if tiled and not tiling:
        notes.append(
            "WARNING: converted for a single view (--no-tiling): the official model tiles images, so answers differ"
        )
        tiled = None

    family = llm_family(official)
    with loading("LLM config of the checkpoint", config_file):
        text_config = text_config_of(official, family)
    with loading("tokenizer of the checkpoint", checkpoint):
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    vocab_ids, vocab_tokens = official_vocabulary_ids(vocab_file, tokenizer)
    chat = chat_format_for(tokenizer)
    if family in OFFICIAL_SYSTEM_PROMPTS and chat.name != "plain":
        chat = chat.with_default_system(OFFICIAL_SYSTEM_PROMPTS[family])
    chat, tokenizer_notes = prepare_tokenizer(tokenizer, chat)
    notes += tokenizer_notes

    weights = read_checkpoint_tensors(checkpoint)
    projector_weights = official_projector_weights(weights, str(checkpoint))
    llm = build_llm(text_config, weights)
    notes += fit_embeddings(llm, tokenizer)

    vision_name = vision_model or official.get("mm_vision_tower") or OFFICIAL_VISION_TOWER
    vision_config, image_processor = official_vision_parts(vision_name, official.get("image_aspect_ratio", "square"))
    if tiled:
        try:
            grid = official_grid_pinpoints(official["image_grid_pinpoints"], vision_config.image_size)
        except (ValueError, SyntaxError, TypeError, IndexError) as error:
            raise LangBridgeUsageError(
                f"{config_file}: image_grid_pinpoints {official['image_grid_pinpoints']!r} cannot be read ({error}); "
                "the official code writes it as a list of [width, height] pairs or a range such as '(1x1),...,(3x3)'."
            ) from None
        pinpoints, image_processor = tiled_image_processor(
            image_processor,
            grid,
            vision_config.image_size,
            tiled["vision_aspect_ratio"],
            tiled["patch_merge_type"],
        )
        tiled["image_grid_pinpoints"] = pinpoints
        notes.append(
            f"tiling as trained: {tiled['vision_aspect_ratio']}, {tiled['patch_merge_type']}, grids (height x width) "
            + ", ".join(f"{h}x{w}" for h, w in pinpoints)
        )
    vision_tower = build_vision_tower(vision_config, weights, vision_name, llm.dtype, use_kernels)
    notes.append(
        "vision tower: "
        + ("weights from the checkpoint" if any(k.startswith(VISION_PREFIX) for k in weights) else vision_name)
    )
    layer = official.get("mm_vision_select_layer", -2)
    if projector_weights["linear_1.weight"].shape[1] != vision_config.hidden_size:
        raise LangBridgeUsageError(
            f"The projector takes {projector_weights['linear_1.weight'].shape[1]}-wide features but {vision_name} "
            f"gives {vision_config.hidden_size}; pass the right --vision-model."
        )

    strategy = "full" if official.get("mm_vision_select_feature", "patch") == "cls_patch" else "default"
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    frozen = official_embedding_matrix(vocab_matrix, official, checkpoint, llm, vocab_ids, notes)
    config = LangBridgeConfig(
        vision_config=vision_config,
        text_config=llm.config,
        projector_hidden_size=projector_weights["linear_1.weight"].shape[0],
        vocab_token_ids=vocab_ids,
        coefficient_activation="none",
        combine_in_float32=True,
        frozen_vocab_embeddings=frozen is not None,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=patches + (1 if strategy == "full" else 0),
        vision_model_name_or_path=vision_name,
        language_model_name_or_path=str(checkpoint),
        **(tiled or {}),
    )
    model = assemble(config, vision_tower, llm, tokenizer)
    projector = model.model.multi_modal_projector
    projector.load_state_dict({k: v.to(llm.dtype) for k, v in projector_weights.items()}, strict=False)
    if frozen is not None:
        projector.frozen_embeddings = frozen
    if config.uses_image_newline:
        model.model.image_newline.data = official_image_newline(weights, checkpoint, llm).to(llm.dtype)
    processor = LangBridgeProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chat.template,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1,
        **tiling_settings(config),
    )
    mapping = VocabularyMapping(tokenizer_name=str(checkpoint), entries=vocab_ids, found=vocab_tokens)
    return Composed(model, processor, mapping, notes)


def official_tiling(official: dict, checkpoint: Path) -> dict | None:
    """The tiling settings of an official config (`image_aspect_ratio` anyres / anyres_max_N, `mm_patch_merge_type`),
    None for single-view checkpoints; variants the official code has but this package does not are refused."""
    aspect_ratio = str(official.get("image_aspect_ratio") or "square")
    merge = str(official.get("mm_patch_merge_type") or "flat")
    if aspect_ratio in ("square", "pad"):
        return None
    if aspect_ratio != "anyres" and not re.fullmatch(r"anyres_max_\d+", aspect_ratio):
        raise LangBridgeUsageError(
            f"{checkpoint} uses image_aspect_ratio={aspect_ratio!r}; only square, pad, anyres and anyres_max_N convert."
        )
    if merge not in ("spatial_unpad", "spatial", "flat"):
        raise LangBridgeUsageError(
            f"{checkpoint} uses mm_patch_merge_type={merge!r}; only spatial_unpad, spatial and flat convert (the "
            "official code's maxpool2x2, nobase and video variants are not implemented)."
        )
    if not official.get("image_grid_pinpoints"):
        raise LangBridgeUsageError(
            f"{checkpoint} tiles images (image_aspect_ratio={aspect_ratio!r}) but its config has no image_grid_pinpoints."
        )
    return {"vision_aspect_ratio": aspect_ratio, "patch_merge_type": merge}


def official_grid_pinpoints(pinpoints, tile_size: int) -> list[list[int]]:
    """The official grid as [height, width] pairs: the official code lists (width, height) pairs, as a list, a
    Python literal, or a range of grids in tiles such as "(1x1),...,(6x6)" (width x height)."""
    if isinstance(pinpoints, str) and "x" in pinpoints:
        ends = re.findall(r"\((\d+)x(\d+)\)", pinpoints)
        (w0, h0), (w1, h1) = (tuple(map(int, e)) for e in (ends[0], ends[-1]))
        pinpoints = [(w * tile_size, h * tile_size) for w in range(w0, w1 + 1) for h in range(h0, h1 + 1)]
    elif isinstance(pinpoints, str):
        pinpoints = ast.literal_eval(pinpoints)
    return [[int(height), int(width)] for width, height in pinpoints]


def official_image_newline(weights: dict[str, torch.Tensor], checkpoint: Path, llm) -> torch.Tensor:
    """The learned row-end embedding (`model.image_newline`) of a spatial_unpad checkpoint."""
    newline = weights.get("model.image_newline")
    width = llm.config.hidden_size
    if newline is None or tuple(newline.shape) != (width,):
        found = "none" if newline is None else f"one of shape {tuple(newline.shape)}"
        raise LangBridgeUsageError(
            f"{checkpoint} tiles with spatial_unpad, which needs its learned model.image_newline [{width}], but the "
            f"checkpoint has {found}. Convert the complete checkpoint, or pass --no-tiling for a single view."
        )
    return newline


def official_vocabulary_ids(vocab_file, tokenizer) -> tuple[list[int], list[str]]:
    """The ids the official code used, checked against the checkpoint's tokenizer."""
    vocabulary = SharedVocabulary.from_official(vocab_file, tokenizer_size=len(tokenizer))
    ids = vocabulary.source["official_ids"]
    raw_tokens = list(read_official_vocabulary(vocab_file))
    wrong = [(token, i) for token, i in zip(raw_tokens, ids) if tokenizer.convert_ids_to_tokens(i) != token]
    if wrong:
        token, token_id = wrong[0]
        raise LangBridgeUsageError(
            f"{vocab_file} does not belong to this checkpoint's tokenizer: {len(wrong)} of its ids name other "
            f"tokens (id {token_id} is {tokenizer.convert_ids_to_tokens(token_id)!r} here, {token!r} in the file). "
            "Pass the vocabulary file made for this LLM (19200_<llm>_sub_llava_share_intersect_llama_qwen.json)."
        )
    return ids, vocabulary.tokens


def build_llm(text_config, weights: dict[str, torch.Tensor]):
    """The causal LM from the checkpoint's own tensors (the LLaVA keys set aside)."""
    state = {k: v for k, v in weights.items() if not k.startswith(UNUSED_PREFIXES)}
    llm, missing = _from_tensors(AutoModelForCausalLM, text_config, state, "LLM")
    missing = [k for k in missing if not (k == "lm_head.weight" and text_config.tie_word_embeddings)]
    if missing:
        raise LangBridgeUsageError(f"The checkpoint lacks LLM weights its config calls for: {missing[:5]}.")
    if text_config.tie_word_embeddings:
        llm.tie_weights()
    return llm


def build_vision_tower(vision_config, weights: dict[str, torch.Tensor], name: str, dtype, use_kernels=None):
    """The vision tower from the checkpoint when it carries one (LLaVA saves it), else from `name`."""
    state = {k[len(VISION_PREFIX) :]: v.to(dtype) for k, v in weights.items() if k.startswith(VISION_PREFIX)}
    if not state:
        return load_vision_tower(name, dtype=dtype, use_kernels=use_kernels)
    tower, missing = _from_tensors(AutoModel, vision_config, state, "vision tower")
    if missing:
        raise LangBridgeUsageError(f"The checkpoint's vision tower lacks {missing[:5]}.")
    return tower


def _from_tensors(auto_class, config, state: dict[str, torch.Tensor], what: str):
    """A model whose parameters are the given tensors. Built without initialising weights (they are replaced),
    so its buffers (rotary frequencies, position ids) are real and no second copy of the weights is made."""
    dtype = next(iter(state.values())).dtype
    with no_init_weights():
        model = auto_class.from_config(config, dtype=dtype)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise LangBridgeUsageError(
            f"The checkpoint's {what} weights do not fit its config: unexpected {result.unexpected_keys[:5]}."
        )
    return model.eval(), result.missing_keys


def official_embedding_matrix(
    vocab_matrix, official: dict, checkpoint: Path, llm, vocab_ids: list[int], notes: list[str]
):
    """The official frozen E when it differs from the checkpoint's live embeddings (full SFT moves them)."""
    candidates = [vocab_matrix] if vocab_matrix else [official.get("mm_vocab_matrix")]
    paths = [Path(c) if Path(c).is_absolute() else checkpoint / c for c in candidates if c]
    path = next((p for p in paths if p.exists()), None)
    if path is None:
        notes.append(
            "official embedding matrix (mm_vocab_matrix) not found: visual tokens use the checkpoint's own "
            "embeddings; if its SFT trained them, pass --vocab-matrix for the official numerics"
        )
        return None
    matrix = load_torch_weights(path)
    live = llm.get_input_embeddings().weight[torch.tensor(vocab_ids)].detach().float()
    if not isinstance(matrix, torch.Tensor) or tuple(matrix.shape) != tuple(live.shape):
        raise LangBridgeUsageError(f"{path} is not a [{live.shape[0]}, {live.shape[1]}] embedding matrix.")
    drift = (matrix.float() - live).abs().max().item()
    if drift <= 1e-6 * max(1.0, live.abs().max().item()):
        notes.append(f"official embedding matrix {path.name} equals the checkpoint's embeddings: E read live")
        return None
    notes.append(
        f"official embedding matrix {path.name} differs from the checkpoint's embeddings (max |diff| {drift:.3g}, "
        "its SFT trained them): keeping the official frozen copy so visual tokens match the official code"
    )
    return matrix.to(llm.dtype)
