"""The `langbridge` command line."""

import argparse
import json
import sys
import tempfile
from pathlib import Path


COMPOSE_DEFAULTS = {"projector_hidden_size": 5120, "vocab_size": 19200, "coefficients": "none", "vision_feature_layer": -2}


def compose_settings(args) -> dict:
    """Flags first, then a hub config (`--config hub_configs/....json`), then the paper's defaults."""
    from_config = {}
    if args.config:
        config = json.loads(Path(args.config).read_text())
        from_config = {
            "vision_model": config.get("vision_model_name_or_path"),
            "language_model": config.get("language_model_name_or_path"),
            "projector_hidden_size": config.get("projector_hidden_size"),
            "vocab_size": config.get("shared_vocab_size"),
            "coefficients": config.get("coefficient_activation"),
            "vision_feature_layer": config.get("vision_feature_layer"),
        }
    settings = {
        key: next((v for v in (getattr(args, key), from_config.get(key), COMPOSE_DEFAULTS.get(key)) if v is not None), None)
        for key in ("vision_model", "language_model", *COMPOSE_DEFAULTS)
    }
    missing = [f"--{key.replace('_', '-')}" for key in ("vision_model", "language_model") if not settings[key]]
    if missing:
        raise ValueError(f"{' and '.join(missing)} required (or --config naming them)")
    return settings


def compose_command(args) -> int:
    from .compose import compose

    settings = compose_settings(args)
    composed = compose(
        settings.pop("vision_model"), settings.pop("language_model"), vocab=args.vocab, dtype=args.dtype, **settings
    )
    for note in composed.notes:
        print(f"- {note}")
    composed.model.save_pretrained(args.out)
    composed.processor.save_pretrained(args.out)
    print(f"Saved an untrained LangBridge model to {args.out}")
    return 0


def quickstart_command(args) -> int:
    """Build tiny parts locally, compose them, and chat with the folder through the pipeline."""
    import torch
    from transformers import pipeline

    from .compose import compose
    from .tiny import random_shapes_image, save_clip_vision, save_qwen2_style_llm

    out = Path(args.out or tempfile.mkdtemp(prefix="langbridge-quickstart-"))
    print(f"Building a tiny CLIP vision tower and a tiny Qwen2-style LLM in {out}/parts ...")
    vision = save_clip_vision(out / "parts" / "clip", full_clip=True)
    llm = save_qwen2_style_llm(out / "parts" / "qwen2")
    print("Composing them with the LangBridge projector ...")
    composed = compose(str(vision), str(llm), projector_hidden_size=64, vocab_size=128)
    for note in composed.notes:
        print(f"- {note}")
    composed.model.save_pretrained(out / "model")
    composed.processor.save_pretrained(out / "model")

    print(f"Loading {out / 'model'} with pipeline('image-text-to-text', trust_remote_code=True) ...")
    torch.manual_seed(args.seed)
    chat = pipeline("image-text-to-text", model=str(out / "model"), trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "image": random_shapes_image(args.seed)},
                                             {"type": "text", "text": "What colour is the square?"}]}]
    reply = chat(text=messages, max_new_tokens=12, return_full_text=False)[0]["generated_text"]
    print("Q: What colour is the square?")
    print(f"A: {reply!r}   (untrained projector and random LLM: the words are noise; the path is real)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="langbridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("compose", help="assemble an untrained LangBridge VLM from a vision model and an LLM")
    p.add_argument("--vision-model", help="path or Hub id (CLIP, SigLIP, ...)")
    p.add_argument("--language-model", help="path or Hub id of a causal LM")
    p.add_argument("--config", type=Path, help="a hub_configs/*.json naming both models and the projector settings")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--projector-hidden-size", type=int, help="H (default 5120)")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-size", type=int, help="T ordinary tokens of the LLM's tokenizer (default 19200)")
    vocab.add_argument("--vocab", type=Path, help="a shared-vocabulary JSON (langbridge vocab build)")
    p.add_argument("--coefficients", choices=["none", "softmax"], help="coefficient activation (default none)")
    p.add_argument("--vision-feature-layer", type=int, help="default -2")
    p.add_argument("--dtype", default="auto", help="auto (the LLM's), float32, bfloat16, float16")
    p.set_defaults(run=compose_command)

    p = commands.add_parser("quickstart", help="compose a tiny model from locally built parts and chat with it")
    p.add_argument("--out", type=Path, help="folder for the parts and the model (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=quickstart_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"langbridge {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
