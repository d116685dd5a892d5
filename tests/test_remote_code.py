"""A saved folder works on a machine without this package: `trust_remote_code=True` loads its own copy
of the model files. Checked in a fresh Python process where `import modeling_langbridge` fails, with this
environment's transformers and with every other Python named in `LANGBRIDGE_REMOTE_CODE_PYTHONS` (paths separated by
`os.pathsep`): inference engines install older transformers (vLLM 0.32: 5.16.1-5.19), and CI's serving stage points
this at such an environment."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from modeling_langbridge.assembly.tiny import random_shapes_image

REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_langbridge"] = None  # this process must not see the installed package
    try:
        import modeling_langbridge
        raise SystemExit("modeling_langbridge is importable; the test proves nothing")
    except ImportError:
        pass
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

    import transformers

    folder, images_dir = sys.argv[1], sys.argv[2]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    backbone = AutoModel.from_pretrained(folder, trust_remote_code=True)
    image = Image.open(f"{images_dir}/rgb.png")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the star?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)

    chat = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    replies = {}
    for mode in ("RGB", "RGBA", "L", "P"):
        picture = Image.open(f"{images_dir}/{mode.lower()}.png")
        assert picture.mode == mode, picture.mode
        message = [{"role": "user", "content": [{"type": "image", "image": picture},
                                                {"type": "text", "text": "Describe the image."}]}]
        replies[mode] = chat(text=message, max_new_tokens=5, return_full_text=False)[0]["generated_text"]
    batch = [[{"role": "user", "content": [{"type": "image", "image": Image.open(f"{images_dir}/{m}.png")},
                                           {"type": "text", "text": q}]}]
             for m, q in (("rgb", "What is it?"), ("p", "How many shapes are there in the picture?"))]
    batch_replies = chat(text=batch, max_new_tokens=5, return_full_text=False, batch_size=2)

    print(json.dumps({
        "transformers": transformers.__version__,
        "classes": [type(o).__module__ for o in (model, processor, backbone)],
        "names": [type(o).__name__ for o in (model, processor, backbone)],
        "generated": generated.tolist(),
        "replies": replies,
        "batch_replies": [r[0]["generated_text"] for r in batch_replies],
    }))
    """
)


@pytest.fixture
def shipped_folder(qwen_clip_dir, tmp_path):
    """The composed folder as a user would download it, plus test images of every PIL mode."""
    folder = tmp_path / "downloaded-model"
    shutil.copytree(qwen_clip_dir, folder)
    images = tmp_path / "images"
    images.mkdir()
    for mode in ("RGB", "RGBA", "L", "P"):
        random_shapes_image(seed=3, size=48, mode=mode).save(images / f"{mode.lower()}.png")
    return folder, images


def test_folder_carries_remote_code_auto_map_and_a_model_card(qwen_clip_dir):
    for name in (
        "configuration_langbridge.py",
        "modeling_langbridge.py",
        "processing_langbridge.py",
        "projection_langbridge.py",
        "tiling_langbridge.py",
        "compatibility_langbridge.py",
        "errors_langbridge.py",
        "chat_template.jinja",
    ):
        assert (qwen_clip_dir / name).exists(), name
    config = json.loads((qwen_clip_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_langbridge.LangBridgeConfig",
        "AutoModel": "modeling_langbridge.LangBridgeModel",
        "AutoModelForImageTextToText": "modeling_langbridge.LangBridgeForConditionalGeneration",
    }
    processor_config = json.loads((qwen_clip_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_langbridge.LangBridgeProcessor"}
    for path in qwen_clip_dir.glob("*.json"):
        assert '"auto_map": null' not in path.read_text(), path
    card = (qwen_clip_dir / "README.md").read_text()
    assert "library_name: transformers" in card and "pipeline_tag: image-text-to-text" in card
    assert "trust_remote_code=True" in card


def other_pythons() -> list:
    """This environment's Python, then those of `LANGBRIDGE_REMOTE_CODE_PYTHONS` (or a skipped row saying how)."""
    named = [path for path in os.environ.get("LANGBRIDGE_REMOTE_CODE_PYTHONS", "").split(os.pathsep) if path]
    if not named:
        reason = "no other transformers named: set LANGBRIDGE_REMOTE_CODE_PYTHONS to their Pythons (.ci/serve does)"
        return [pytest.param(None, id="other-transformers", marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(path, id=path) for path in named]


@pytest.mark.parametrize("python", [pytest.param(sys.executable, id="this-environment"), *other_pythons()])
def test_folder_loads_and_generates_without_the_package(shipped_folder, tmp_path, python):
    folder, images = shipped_folder
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules_cache"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [python, "-c", REMOTE_SCRIPT, str(folder), str(images)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    if python != sys.executable:
        print(f"remote code ran on transformers {report['transformers']} ({python})")
    assert all(module.startswith("transformers_modules") for module in report["classes"]), report["classes"]
    assert report["names"] == ["LangBridgeForConditionalGeneration", "LangBridgeProcessor", "LangBridgeModel"]
    assert set(report["replies"]) == {"RGB", "RGBA", "L", "P"}
    assert all(isinstance(reply, str) for reply in report["replies"].values())
    assert len(report["batch_replies"]) == 2

    # The remote copy computes exactly what the installed package computes.
    local, prompt_length = generate_locally(folder, images / "rgb.png")
    assert report["generated"] == local.tolist()
    assert len(local[0]) > prompt_length


def generate_locally(folder, image_path):
    """What the installed package generates for the remote-code script's first question: (tokens, prompt length)."""
    from PIL import Image

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the star?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=[Image.open(image_path)], text=[text], return_tensors="pt")
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=6, do_sample=False), inputs["input_ids"].shape[1]
