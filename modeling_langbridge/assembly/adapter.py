"""Adapter checkpoints: the LangBridge projector alone, ready to serve another LLM.

An adapter is the projector's weights, the token strings of its shared vocabulary, and the vision-side facts
it needs (feature size, feature layer, selection strategy, coefficient activation). It holds no token ids
and no embeddings: those belong to an LLM, and `transfer` supplies them.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import LangBridgeUsageError, loading
from ..files import atomic_folder, load_safetensors, read_checkpoint_tensors
from .vocab import SharedVocabulary

ADAPTER_CONFIG = "langbridge_adapter.json"
ADAPTER_WEIGHTS = "langbridge_adapter.safetensors"
VOCABULARY_FILE = "shared_vocabulary.json"
FORMAT = "langbridge-adapter"
PROJECTOR_PREFIX = "model.multi_modal_projector."
PROJECTOR_SHAPES = {  # name -> shape in terms of (H: hidden, T: vocabulary, Dv: vision features)
    "linear_1.weight": ("H", "Dv"),
    "linear_1.bias": ("H",),
    "linear_2.weight": ("H", "H"),
    "linear_2.bias": ("H",),
    "vocab_proj.weight": ("T", "H"),
    "vocab_proj.bias": ("T",),
}


@dataclass
class AdapterFacts:
    """What an adapter needs from the vision side, and how it mixes embeddings."""

    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"
    coefficient_activation: str = "none"
    combine_in_float32: bool = True
    projector_hidden_act: str = "gelu"
    vision_model_name_or_path: str | None = None
    trained_with: str | None = None  # the LLM the adapter was trained with, for the record


@dataclass
class LangBridgeAdapter:
    weights: dict[str, torch.Tensor]
    vocabulary: SharedVocabulary
    facts: AdapterFacts = field(default_factory=AdapterFacts)

    def __post_init__(self):
        missing = sorted(set(PROJECTOR_SHAPES) - set(self.weights))
        if missing:
            raise LangBridgeUsageError(f"The adapter weights lack {missing} (have {sorted(self.weights)}).")
        sizes = {"H": self.projector_hidden_size, "T": self.shared_vocab_size, "Dv": self.vision_feature_size}
        for name, symbols in PROJECTOR_SHAPES.items():
            expected = tuple(sizes[s] for s in symbols)
            if tuple(self.weights[name].shape) != expected:
                raise LangBridgeUsageError(
                    f"Adapter weight {name} has shape {tuple(self.weights[name].shape)}, expected {expected}."
                )
        if len(self.vocabulary) != self.shared_vocab_size:
            raise LangBridgeUsageError(
                f"The adapter's output layer has {self.shared_vocab_size} rows but its vocabulary lists "
                f"{len(self.vocabulary)} tokens: they must correspond one to one."
            )

    @property
    def vision_feature_size(self) -> int:
        return self.weights["linear_1.weight"].shape[1]

    @property
    def projector_hidden_size(self) -> int:
        return self.weights["linear_1.weight"].shape[0]

    @property
    def shared_vocab_size(self) -> int:
        return self.weights["vocab_proj.weight"].shape[0]

    @classmethod
    def from_model(cls, model, tokenizer) -> "LangBridgeAdapter":
        """The projector of a loaded LangBridge model, with its vocabulary read through the model's tokenizer."""
        weights = {k: v.detach().cpu().contiguous() for k, v in model.model.multi_modal_projector.state_dict().items()}
        return cls(weights, SharedVocabulary.from_model(model.config, tokenizer), facts_of_config(model.config))

    @classmethod
    def from_model_folder(cls, folder: str | Path) -> "LangBridgeAdapter":
        """The projector of a saved LangBridge folder, read from its weights without loading the LLM."""
        from transformers import AutoTokenizer

        from ..model.configuration_langbridge import LangBridgeConfig

        config_file = Path(folder) / "config.json"
        if not config_file.exists():
            raise LangBridgeUsageError(
                f"{folder} is not a model folder (no config.json); give the folder a LangBridge model was saved to."
            )
        model_type = read_json_object(config_file).get("model_type")
        if model_type != LangBridgeConfig.model_type:
            raise LangBridgeUsageError(
                f"{folder} holds a {model_type!r} model, not a LangBridge one, so it has no adapter to export; "
                "give a folder made by `langbridge compose`, `transfer` or training."
            )
        with loading("model", folder):
            config = LangBridgeConfig.from_pretrained(folder)
        tensors = read_checkpoint_tensors(folder, PROJECTOR_PREFIX)
        weights = {
            k[len(PROJECTOR_PREFIX) :]: v for k, v in tensors.items() if k[len(PROJECTOR_PREFIX) :] in PROJECTOR_SHAPES
        }
        with loading("tokenizer of the model", folder):
            tokenizer = AutoTokenizer.from_pretrained(folder)
        vocabulary = SharedVocabulary.from_model(config, tokenizer)
        return cls(weights, vocabulary, facts_of_config(config))

    def save_pretrained(self, folder: str | Path) -> Path:
        with atomic_folder(folder) as scratch:
            save_file(
                {k: v.contiguous() for k, v in self.weights.items()},
                scratch / ADAPTER_WEIGHTS,
                metadata={"format": "pt"},
            )
            self.vocabulary.save(scratch / VOCABULARY_FILE)
            description = {
                "format": FORMAT,
                "vision_feature_size": self.vision_feature_size,
                "projector_hidden_size": self.projector_hidden_size,
                "shared_vocab_size": self.shared_vocab_size,
                **asdict(self.facts),
            }
            (scratch / ADAPTER_CONFIG).write_text(json.dumps(description, indent=2) + "\n")
        return Path(folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "LangBridgeAdapter":
        folder = Path(folder)
        config_file = folder / ADAPTER_CONFIG
        if not config_file.exists():
            hint = (
                " It is a full model folder: export its adapter with `langbridge export-adapter`."
                if (folder / "config.json").exists()
                else ""
            )
            raise LangBridgeUsageError(f"{folder} is not a LangBridge adapter (no {ADAPTER_CONFIG}).{hint}")
        description = read_json_object(config_file)
        if description.get("format") != FORMAT:
            raise LangBridgeUsageError(f"{config_file} is not a LangBridge adapter description.")
        facts = AdapterFacts(**{k: description[k] for k in AdapterFacts.__dataclass_fields__ if k in description})
        check_facts(facts, config_file)
        return cls(load_safetensors(folder / ADAPTER_WEIGHTS), SharedVocabulary.load(folder / VOCABULARY_FILE), facts)


def read_json_object(path: Path) -> dict:
    """A JSON object from a file, or a refusal naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LangBridgeUsageError(f"{path} is not a UTF-8 JSON file ({error}); download or save it again.") from None
    if not isinstance(data, dict):
        raise LangBridgeUsageError(f"{path} holds a JSON {type(data).__name__}, not an object; save it again.")
    return data


def check_facts(facts: AdapterFacts, source) -> None:
    """An adapter description's settings, checked as the model config checks them, naming the file."""
    from ..model.configuration_langbridge import check_setting

    for name in (
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "coefficient_activation",
        "combine_in_float32",
        "projector_hidden_act",
    ):
        try:
            check_setting(name, getattr(facts, name))
        except ValueError as error:
            raise LangBridgeUsageError(f"{source}: {error}") from None


def facts_of_config(config) -> AdapterFacts:
    return AdapterFacts(
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        coefficient_activation=config.coefficient_activation,
        combine_in_float32=config.combine_in_float32,
        projector_hidden_act=config.projector_hidden_act,
        vision_model_name_or_path=config.vision_model_name_or_path,
        trained_with=config.language_model_name_or_path,
    )
