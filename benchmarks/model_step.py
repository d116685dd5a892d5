"""A LangBridge model against transformers' `LlavaForConditionalGeneration` on the same vision tower and LLM:
a full training step (forward + backward + AdamW; vision tower frozen, connector and LLM trained) and
generation tokens/s. Small configs with the proportions of Qwen2-0.5B + CLIP-L/336 (widths 896 and 1024,
576 patches, T = 19,200 shared tokens), fewer layers; no softmax (the official numerics).

    python -m benchmarks.model_step [--repeats 5] [--generation-repeats 10]
"""

import argparse

import torch

from .measure import compare

T = 19200


def parts():
    from transformers import CLIPVisionConfig, Qwen2Config

    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=2,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    text = Qwen2Config(
        vocab_size=32000,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=2,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    return vision, text


def build(kind: str, hidden: int = 512):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from modeling_langbridge import LangBridgeConfig, LangBridgeForConditionalGeneration

    vision, text = parts()
    image_token = text.vocab_size - 1
    if kind == "llava":
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=image_token,
            image_seq_length=576,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        model = LlavaForConditionalGeneration(config)
    else:
        config = LangBridgeConfig(
            vision_config=vision.to_dict(),
            text_config=text.to_dict(),
            projector_hidden_size=hidden,
            shared_vocab_size=T,
            vocab_token_ids=list(range(100, 100 + T)),
            image_token_id=image_token,
        )
        model = LangBridgeForConditionalGeneration(config)
    for parameter in model.model.vision_tower.parameters():
        parameter.requires_grad_(False)
    return model, image_token


def batch(image_token: int, images: int = 2, text_tokens: int = 64):
    ids = torch.randint(200, 20000, (images, 576 + text_tokens))
    ids[:, 1:577] = image_token
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(images, 3, 336, 336),
        "labels": ids.clone(),
    }


def train_step(kind: str):
    model, image_token = build(kind)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    inputs = batch(image_token)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        optimizer.step()

    return step


def generation(kind: str, new_tokens: int = 32):
    model, image_token = build(kind)
    model.eval()
    inputs = batch(image_token, images=1, text_tokens=16)
    inputs.pop("labels")

    def step():
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    return step


CASES = {"train_step": train_step, "generation": generation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--generation-repeats", type=int, default=10, help="a generation is a quarter of a step: more of them"
    )
    args = parser.parse_args()
    print(
        f"LangBridge vs LLaVA, same parts; peak memory from a fresh process per side; time: median of {args.repeats} "
        f"training steps ({args.generation_repeats} generations) per side after a warm-up, alternated in one process; "
        f"{torch.get_num_threads()} threads"
    )
    sides = {kind: {"kind": kind} for kind in ("llava", "langbridge")}
    step = compare("benchmarks.model_step", "train_step", sides, args.repeats)
    llava, langbridge = step["llava"], step["langbridge"]
    print(
        f"  training step: {langbridge['seconds']:.3f}s vs LLaVA {llava['seconds']:.3f}s -> "
        f"{langbridge['seconds'] / llava['seconds']:.2f}x time; peak step memory {langbridge['peak_mb']:.0f}MB vs "
        f"{llava['peak_mb']:.0f}MB -> {langbridge['peak_mb'] / llava['peak_mb']:.2f}x",
        flush=True,
    )
    generation = compare("benchmarks.model_step", "generation", sides, args.generation_repeats)
    llava, langbridge = generation["llava"], generation["langbridge"]
    print(
        f"  generation (1 image, 32 new tokens): {32 / langbridge['seconds']:.1f} vs LLaVA {32 / llava['seconds']:.1f} "
        f"tokens/s -> {llava['seconds'] / langbridge['seconds']:.2f}x LLaVA's tokens/s",
        flush=True,
    )


if __name__ == "__main__":
    main()
