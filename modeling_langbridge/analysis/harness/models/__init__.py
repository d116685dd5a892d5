"""lmms-eval finds the model here in two ways:

- the `lmms_eval.models` entry point in pyproject.toml (lmms-eval >= 0.7; 0.7.3 is the version tested) calls
  `manifest()`;
- the older hook, `LMMS_EVAL_PLUGINS=modeling_langbridge.analysis.harness`, reads `AVAILABLE_MODELS` (kept for older
  lmms-eval versions, which are not tested).

Either way `--model langbridge` resolves to `modeling_langbridge.analysis.harness.models.langbridge.LangBridge`.
"""

AVAILABLE_MODELS = {"langbridge": "LangBridge"}
CLASS_PATH = f"{__name__}.langbridge.LangBridge"


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="langbridge", simple_class_path=CLASS_PATH)
