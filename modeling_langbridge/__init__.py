"""LangBridge for transformers.

Importing the package registers LangBridge with the Auto classes (so folders load without
`trust_remote_code`) and marks the classes for remote code (so `save_pretrained` writes `auto_map` and
copies the model files, and the folder loads with `trust_remote_code=True` where this package is absent).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_langbridge import LangBridgeConfig
from .modeling_langbridge import (
    LangBridgeForConditionalGeneration,
    LangBridgeModel,
    LangBridgePreTrainedModel,
    LangBridgeProjector,
)
from .processing_langbridge import LangBridgeProcessor

__version__ = "0.1.0"

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
