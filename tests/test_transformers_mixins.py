"""transformers' own shared model test suites run on LangBridge, as transformers' tests/models/llava runs them on Llava.

`ModelTesterMixin` and `ConfigTester` (and `GenerationTesterMixin` where the installed transformers' source
distribution ships it) come from the installed version's sdist at test time (transformers_test_files.py); the module
is skipped, with the reason, where they cannot be had. The tester is modelled on transformers'
`LlavaVisionText2TextModelTester`: a tiny CLIP vision tower and a tiny Qwen2 LLM, built locally, once per coefficient
activation. Everything of the suites that does not apply to LangBridge is listed in one place, `NOT_APPLICABLE` below,
with its reason (and `RUN_ONCE`: what the second class would only repeat); the rest runs, and a failure is a defect of
LangBridge (or of this tester). Besides those, the suites skip their own tests for hardware and packages this machine
lacks (an accelerator, flash attention, DeepSpeed) and for features LangBridge does not have (MoE, sliding windows).
"""

import copy
import unittest
import warnings
from unittest import mock

import pytest
import torch
import transformers_test_files
from transformers.models.auto import modeling_auto
from transformers.testing_utils import torch_device

from modeling_langbridge.model.configuration_langbridge import LangBridgeConfig
from modeling_langbridge.model.modeling_langbridge import LangBridgeForConditionalGeneration, LangBridgeModel

try:
    with warnings.catch_warnings():  # transformers registers its marks (flash_attn_test, ...) in its own conftest
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        suites = transformers_test_files.load()
except transformers_test_files.Unavailable as error:
    pytest.skip(f"transformers' shared test suites cannot be had: {error}", allow_module_level=True)

ModelTesterMixin = suites.modeling.ModelTesterMixin
GenerationTesterMixin = suites.generation.GenerationTesterMixin
ConfigTester = suites.configuration.ConfigTester
floats_tensor = suites.modeling.floats_tensor
ids_tensor = suites.modeling.ids_tensor
parameterized = suites.modeling.parameterized


def absent_from_sdist(path: str, what: str) -> str | None:
    """The reason a suite does not run, where transformers' sdist lacks its file (and a stub stands in for it)."""
    if path not in suites.missing:
        return None
    return (
        f"transformers {suites.version}'s source distribution lacks tests/{path} (the sdist carries only the top-level "
        f"tests/test_*.py files), so {what} cannot run here"
    )


GENERATION_ABSENT = absent_from_sdist("generation/test_utils.py", "GenerationTesterMixin's generate tests")
EXPORT_ABSENT = absent_from_sdist("exporters/test_export.py", "ExportTesterMixin's torch.export tests")

PLACEHOLDERS_WITHOUT_IMAGES = (
    "feeds input_ids alone (random ids over the whole vocabulary, the <image> placeholder's among them, or the "
    "tester's prompts) with no pixel_values; LangBridge refuses placeholders without images by design (a ValueError "
    "saying how to build the inputs), where Llava embeds them as ordinary tokens"
)

# Every test of transformers' suites that does not apply to LangBridge, with the reason; each is skipped in every
# class below. A name ending in `*` covers the cases `parameterized.expand` makes of one test.
NOT_APPLICABLE = {
    "test_model_rope_scaling_from_config_*": f"Text-backbone RoPE test that {PLACEHOLDERS_WITHOUT_IMAGES}.",
}
if GENERATION_ABSENT:
    NOT_APPLICABLE["test_generation_tester_mixin_inheritance"] = (
        f"{GENERATION_ABSENT}; the test class inherits only a stand-in, which this check cannot judge."
    )
# Suites of transformers releases that lack the hooks this module adapts tests with (checked on 5.24 and 5.25,
# which have them): without them, the tests are skipped as transformers' Llava test skips them.
EAGER_VS_SDPA_CASES = getattr(suites.modeling, "TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION", None)
if EAGER_VS_SDPA_CASES is None or not hasattr(suites.modeling, "_test_eager_matches_sdpa_inference"):
    NOT_APPLICABLE["test_eager_matches_sdpa_inference*"] = (
        f"Eager-vs-SDPA test that {PLACEHOLDERS_WITHOUT_IMAGES}; this transformers' suite has no hook to add images."
    )
if not hasattr(ModelTesterMixin, "test_all_params_have_gradient"):
    NOT_APPLICABLE["test_training_gradient_checkpointing*"] = (
        "CLIP's post_layernorm feeds only the tower's pooled output, which LangBridge never reads, so it gets no "
        "gradient; this transformers' suite cannot leave it out of its every-parameter check (Llava's test skips these "
        "tests for the same reason)."
    )
# Run in the first class only: tests the second class (softmax coefficients) would only repeat, being about parts the
# coefficient activation does not touch, and that are slow (half the module's time).
RUN_ONCE = {
    "test_eager_matches_sdpa_inference_*": (
        "The coefficient activation lives in the projector, not in attention; eager-vs-SDPA runs (with images) in "
        "LangBridgeModelTest."
    ),
}

# transformers' tests decide what a class is (a base model without loss, a head that takes labels, ...) from the
# static name tables of transformers' Auto classes, where Llava is listed and LangBridge, registered at runtime
# (`AutoModel.register`), is not. During each test LangBridge is listed where Llava is.
AUTO_NAME_TABLES = {
    "MODEL_MAPPING_NAMES": "LangBridgeModel",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES": "LangBridgeForConditionalGeneration",
    "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES": "LangBridgeForConditionalGeneration",
    "MODEL_FOR_PRETRAINING_MAPPING_NAMES": "LangBridgeForConditionalGeneration",
}


def skip_tests(cls, reasons: dict[str, str] = NOT_APPLICABLE):
    """Replace each test named in `reasons` with a skip giving its reason."""
    for pattern, reason in reasons.items():
        if pattern.endswith("*"):
            names = [name for name in dir(cls) if name.startswith(pattern[:-1])]
        else:
            names = [pattern] if hasattr(cls, pattern) else []
        for name in names:
            setattr(cls, name, unittest.skip(reason)(getattr(cls, name)))
    return cls


class LangBridgeModelTester:
    """Tiny LangBridge configs and inputs for the shared suites, after transformers' `LlavaVisionText2TextModelTester`:
    the same sizes, a Qwen2 LLM (the paper's) instead of Llama, and the shared vocabulary LangBridge mixes."""

    def __init__(
        self,
        parent,
        coefficient_activation="none",
        image_token_id=1,
        projector_hidden_act="gelu",
        seq_length=7,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_size=32,
        text_config=None,
        vision_config=None,
        is_training=True,
    ):
        self.parent = parent
        self.coefficient_activation = coefficient_activation
        self.image_token_id = image_token_id
        self.projector_hidden_act = projector_hidden_act
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.vision_feature_layer = vision_feature_layer
        self.projector_hidden_size = projector_hidden_size
        self.text_config = text_config or {
            "model_type": "qwen2",
            "vocab_size": 99,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 37,
            "hidden_act": "silu",
            "max_position_embeddings": 512,
            "initializer_range": 0.02,
            "pad_token_id": 0,
        }
        self.vision_config = vision_config or {
            "model_type": "clip_vision_model",
            "image_size": 8,
            "patch_size": 2,
            "num_channels": 3,
            "hidden_size": 32,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "dropout": 0.1,
            "attention_dropout": 0.1,
            "initializer_range": 0.02,
        }
        # Llava's tester has the image at id 0 and pad at 1; here they swap, because the suites' training tests use
        # labels of zeros and LangBridge never trains on the image placeholder's id (all labels would be ignored and
        # the loss NaN, which the gradient-checkpointing comparisons then pass vacuously).
        # The shared vocabulary: ordinary ids clear of the pad and image ids, and one entry composed of sub-tokens
        # (a token the LLM lacks, embedded as the mean of its pieces).
        self.vocab_token_ids = [*range(2, 25), [30, 31, 32]]
        self.pad_token_id = self.text_config["pad_token_id"]
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.vocab_size = self.text_config["vocab_size"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.is_training = is_training

        self.batch_size = 3
        self.num_channels = 3
        self.num_image_tokens = (self.vision_config["image_size"] // self.vision_config["patch_size"]) ** 2
        self.seq_length = seq_length + self.num_image_tokens
        self.encoder_seq_length = self.seq_length

    def get_config(self):
        return LangBridgeConfig(
            text_config=self.text_config,
            vision_config=self.vision_config,
            projector_hidden_size=self.projector_hidden_size,
            projector_hidden_act=self.projector_hidden_act,
            vocab_token_ids=self.vocab_token_ids,
            coefficient_activation=self.coefficient_activation,
            image_token_id=self.image_token_id,
            image_seq_length=self.num_image_tokens,
            vision_feature_select_strategy=self.vision_feature_select_strategy,
            vision_feature_layer=self.vision_feature_layer,
        )

    def prepare_config_and_inputs(self):
        size = self.vision_config["image_size"]
        pixel_values = floats_tensor([self.batch_size, self.vision_config["num_channels"], size, size])
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        input_ids = ids_tensor([self.batch_size, self.seq_length], config.text_config.vocab_size - 2) + 2
        attention_mask = torch.ones(input_ids.shape, dtype=torch.long).to(torch_device)
        input_ids[input_ids == config.image_token_id] = self.pad_token_id
        input_ids[:, : self.num_image_tokens] = config.image_token_id
        inputs_dict = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
        return config, inputs_dict


@skip_tests
class LangBridgeModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    """transformers' shared suites on LangBridge with raw-logit coefficients (`coefficient_activation="none"`)."""

    coefficient_activation = "none"
    all_model_classes = (LangBridgeModel, LangBridgeForConditionalGeneration)
    _is_composite = True
    # transformers runs this test only for its models added since 2023 (by the copyright year of their config file);
    # LangBridge is new.
    test_can_init_all_missing_weights_before_2023 = True
    # Not applicable: the gradient-checkpointing tests' last check, that every parameter gets a gradient. CLIP's
    # `post_layernorm` only feeds the tower's pooled output, which LangBridge (like Llava, whose test skips these tests
    # for it) never reads. The rest of those tests runs: checkpointing is active and changes no gradient; the check
    # itself runs here for every other parameter (`test_every_parameter_but_the_unused_ones_gets_a_gradient`).
    test_all_params_have_gradient = False

    def setUp(self):
        for table, class_name in AUTO_NAME_TABLES.items():
            patcher = mock.patch.dict(getattr(modeling_auto, table), {"langbridge": class_name})
            patcher.start()
            self.addCleanup(patcher.stop)
        self.model_tester = LangBridgeModelTester(self, coefficient_activation=self.coefficient_activation)
        self.config_tester = ConfigTester(
            self,
            config_class=LangBridgeConfig,
            has_text_modality=False,
            common_properties=["image_token_id", "vision_feature_layer", "image_seq_length"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skipIf(GENERATION_ABSENT, GENERATION_ABSENT or "")
    def test_generation_suite_is_here(self):
        """Stands for transformers' generate tests where they cannot be had (the skip says why)."""

    @unittest.skipIf(EXPORT_ABSENT, EXPORT_ABSENT or "")
    def test_export_suite_is_here(self):
        """Stands for transformers' torch.export tests where they cannot be had (the skip says why)."""

    if EAGER_VS_SDPA_CASES is not None:

        @parameterized.expand(EAGER_VS_SDPA_CASES)
        def test_eager_matches_sdpa_inference(
            self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
        ):
            """transformers' eager-vs-SDPA test, given the images. As written, it feeds the main input (`input_ids`)
            alone and pads the batch to 7 rows with random ids, so the placeholders would come without images; here
            the batch has 7 rows from the start and `pixel_values` goes with them (`additional_model_inputs`)."""
            self.model_tester.batch_size = 7
            self.additional_model_inputs = ["pixel_values"]
            suites.modeling._test_eager_matches_sdpa_inference(
                self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
            )

    def test_every_parameter_but_the_unused_ones_gets_a_gradient(self):
        """The check `test_all_params_have_gradient = False` turns off in the gradient-checkpointing tests, for every
        parameter but CLIP's `post_layernorm` (the pooled output's, which LangBridge never reads)."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        model = LangBridgeForConditionalGeneration(config).to(torch_device).train()
        inputs = self._prepare_for_class(inputs_dict, LangBridgeForConditionalGeneration, return_labels=True)
        model(**inputs).loss.backward()
        unused = ("model.vision_tower.vision_model.post_layernorm.", "model.vision_tower.post_layernorm.")
        without = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith(unused)]
        self.assertEqual(without, [], "parameters without a gradient")

    def test_mismatching_num_image_tokens(self):
        """As transformers' Llava test: images and placeholders that disagree are refused (LangBridge: ValueError, with
        how to build the inputs), also in the multi-image case."""
        config, input_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).to(torch_device).eval()
            inputs = copy.deepcopy(input_dict)
            model(**inputs)
            inputs["pixel_values"] = inputs["pixel_values"][-1:]
            with self.assertRaises(ValueError):
                model(**inputs)
            input_ids = torch.cat([inputs["input_ids"][:1]] * 2)
            pixel_values = inputs["pixel_values"][:1]
            with self.assertRaises(ValueError):
                model(input_ids=input_ids, pixel_values=pixel_values)
            model(input_ids=input_ids, pixel_values=torch.cat([pixel_values] * 2))

    @parameterized.expand([(-1,), ([-1],), ([-1, -2],)])
    def test_vision_feature_layers(self, vision_feature_layer):
        """As transformers' Llava test: one vision feature layer, or several concatenated."""
        config, input_dict = self.model_tester.prepare_config_and_inputs_for_common()
        config.vision_feature_layer = vision_feature_layer
        layers = 1 if isinstance(vision_feature_layer, int) else len(vision_feature_layer)
        for model_class in self.all_model_classes:
            model = model_class(config).to(torch_device)
            base_model = getattr(model, "model", model)
            self.assertEqual(
                base_model.multi_modal_projector.linear_1.in_features, config.vision_config.hidden_size * layers
            )
            model(**input_dict)


class LangBridgeSoftmaxModelTest(LangBridgeModelTest):
    """The same suites with softmax coefficients (`coefficient_activation="softmax"`), but for `RUN_ONCE`."""

    coefficient_activation = "softmax"


skip_tests(LangBridgeSoftmaxModelTest, RUN_ONCE)
