"""LangBridge for transformers.

Importing the package registers LangBridge with the Auto classes (so folders load without
`trust_remote_code`) and marks the classes for remote code (so `save_pretrained` writes `auto_map` and
copies the model files, and the folder loads with `trust_remote_code=True` where this package is absent).

Inside:
    model/      the files every checkpoint carries as remote code; they import only each other
    assembly/   shared vocabularies, compose, adapters and transfer, conversion of official checkpoints
    analysis/   reading visual tokens as words, the alignment measure, evaluation, the harness runner
    cli/        the `langbridge` command: a dispatcher over one module per command group
    errors.py, files.py, notices.py   helpers the tools share (never imported by model/)
"""

import sys

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .model.configuration_langbridge import LangBridgeConfig
from .model.modeling_langbridge import (
    LangBridgeForConditionalGeneration,
    LangBridgeModel,
    LangBridgePreTrainedModel,
    LangBridgeProjector,
)
from .model.processing_langbridge import LangBridgeProcessor
from .moved import MovedModuleFinder

__version__ = "0.1.0"

if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
    # Old import paths (the flat layout of 0.1) keep working. First in line: below an old package name the real
    # path finder would otherwise load a second copy of a module from the new folder.
    sys.meta_path.insert(0, MovedModuleFinder())

AutoConfig.register("langbridge", LangBridgeConfig, exist_ok=True)
AutoModel.register(LangBridgeConfig, LangBridgeModel, exist_ok=True)
AutoModelForImageTextToText.register(LangBridgeConfig, LangBridgeForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LangBridgeConfig, LangBridgeProcessor, exist_ok=True)

LangBridgeConfig.register_for_auto_class()
LangBridgeModel.register_for_auto_class("AutoModel")
LangBridgeForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
LangBridgeProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "LangBridgeConfig",
    "LangBridgeForConditionalGeneration",
    "LangBridgeModel",
    "LangBridgePreTrainedModel",
    "LangBridgeProcessor",
    "LangBridgeProjector",
]
