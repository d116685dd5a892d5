"""The one reader of `hub_configs/*.json`: a real pair (vision model + LLM) as `compose`'s arguments.

A hub config is a saved `LangBridgeConfig` plus the two models' ids, so it is read through `LangBridgeConfig` (its
checks apply: sizes, layers, tiling) and every key is accounted for: a setting goes to `compose` under its own name;
what compose derives from the two models (their configs, the image token, the vocabulary ids) is recorded there for
reference, and `derived_differences` compares it with what was built; anything else is refused as unknown.
"""

import json
from pathlib import Path

from ..errors import LangBridgeUsageError
from ..model.configuration_langbridge import LangBridgeConfig, check_setting, settings_from

# Keys that are compose's arguments, under the config's names.
SETTINGS = (
    "projector_hidden_size",
    "projector_hidden_act",
    "shared_vocab_size",
    "coefficient_activation",
    "combine_in_float32",
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "image_grid_pinpoints",
    "vision_aspect_ratio",
    "patch_merge_type",
)
# Keys compose derives from the models themselves; a hub config records them for reference.
DERIVED = (
    "vision_config",
    "text_config",
    "image_token_id",
    "image_seq_length",
    "vocab_token_ids",
    "tie_word_embeddings",
    "frozen_vocab_embeddings",
    "model_type",
    "transformers_version",
)
MODELS = {"vision_model_name_or_path": "vision_model", "language_model_name_or_path": "language_model"}


def read_hub_config(path: str | Path) -> dict:
    """`compose`'s keyword arguments (with `vision_model` and `language_model`) from a hub config file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LangBridgeUsageError(f"{path} is not valid JSON ({error}); give a hub_configs/*.json file.") from None
    if not isinstance(raw, dict):
        raise LangBridgeUsageError(
            f"{path} holds a JSON {type(raw).__name__}, not an object of settings; give a hub_configs/*.json file."
        )
    unknown = sorted(set(raw) - set(SETTINGS) - set(DERIVED) - set(MODELS))
    if unknown:
        raise LangBridgeUsageError(
            f"{path} has keys a LangBridge hub config does not have: {', '.join(unknown)}. Settings are "
            f"{', '.join(SETTINGS)}; see hub_configs/ for complete examples."
        )
    for key in MODELS:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise LangBridgeUsageError(f"{path}: {key} must be a path or Hub id (text), not {raw[key]!r}.")
    checked = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version")}
    from_raw = ("image_grid_pinpoints",)
    if "vision_config" not in raw and raw.get("image_grid_pinpoints") is not None:
        # Tiles are multiples of the vision tower's input size, known only once compose loads the tower (it checks
        # them); here the tiling settings are checked for their form only.
        from_raw = ("image_grid_pinpoints", "vision_aspect_ratio", "patch_merge_type")
        with settings_from(str(path)):
            for name in from_raw:
                if name in checked:
                    check_setting(name, checked.pop(name))
    with settings_from(str(path)):
        config = LangBridgeConfig(**checked)
    settings = {name: raw[name] if name in from_raw else getattr(config, name) for name in SETTINGS if name in raw}
    settings.update({argument: raw[key] for key, argument in MODELS.items() if raw.get(key)})
    return settings


# (where, what) pairs compared by `derived_differences`: the models' shapes a hub config was written for.
COMPARED = (
    ("text_config", "hidden_size"),
    ("text_config", "num_hidden_layers"),
    ("vision_config", "hidden_size"),
    ("vision_config", "image_size"),
    (None, "image_seq_length"),
)


def derived_differences(path: str | Path, built: LangBridgeConfig) -> list[str]:
    """Notes where the composed model differs from what the hub config recorded (e.g. a Hub model that changed)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))  # read_hub_config has checked it
    notes = []
    for where, key in COMPARED:
        recorded = (raw.get(where) or {}).get(key) if where else raw.get(key)
        actual = getattr(getattr(built, where) if where else built, key, None)
        if recorded is not None and recorded != actual:
            name = f"{where}.{key}" if where else key
            notes.append(f"{Path(path).name} records {name} = {recorded}, the composed model has {actual}")
    return notes
