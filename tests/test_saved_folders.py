"""Folders saved by an earlier release keep loading and answering as they did (tests/fixtures/saved-by-0.1/README.md
says how they were made): users keep checkpoints across upgrades."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

SAVED_BY_0_1 = Path(__file__).parent / "fixtures" / "saved-by-0.1"
EXPECTED = json.loads((SAVED_BY_0_1 / "expected.json").read_text())


@pytest.mark.parametrize("name", ["qwen_clip", "llama_siglip"])
def test_a_folder_saved_by_0_1_loads_and_answers_as_it_did(name):
    folder = SAVED_BY_0_1 / name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoModelForImageTextToText.from_pretrained(folder).eval()
        processor = AutoProcessor.from_pretrained(folder)
    assert (
        type(model).__module__ == "modeling_langbridge.model.modeling_langbridge"
    )  # the package, not the folder's copy
    assert not [w for w in caught if "modeling_langbridge" in (w.filename or "")], [str(w.message) for w in caught]

    image = Image.open(SAVED_BY_0_1 / EXPECTED["image"])
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": EXPECTED["prompt"]}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=EXPECTED["max_new_tokens"], do_sample=False)
    torch.testing.assert_close(logits, load_file(SAVED_BY_0_1 / f"{name}-logits.safetensors")["logits"])
    assert tokens[0].tolist() == EXPECTED["greedy_tokens"][name]

    answer = pipeline("image-text-to-text", model=model, processor=processor)(
        text=[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}],
        max_new_tokens=3,
    )
    assert answer[0]["generated_text"][-1]["role"] == "assistant"
