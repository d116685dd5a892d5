"""Commands that train: the recipes (train), the demo, and the quickstart."""

import shutil
import tempfile
from pathlib import Path

from .common import Parser, add_kernels_option, command, non_negative, print_notes


def train_command(args) -> int:
    """A training recipe (langbridge_training.pretrain or .sft) with its YAML config; extra flags override it."""
    import importlib

    from trl import ModelConfig, SFTConfig, TrlParser

    from langbridge_training.arguments import LangBridgeArguments

    recipe = importlib.import_module(f"langbridge_training.{args.stage}")
    parser = TrlParser((LangBridgeArguments, SFTConfig, ModelConfig), prog="langbridge train")
    parser.error = lambda message: Parser.error(parser, message)  # one line, not the usage of every setting
    recipe.main(*parser.parse_args_and_config(["--config", str(args.config), *args.overrides]))
    return 0


def demo_command(args) -> int:
    if args.caption_word_loss and (args.study or args.remedies):
        raise ValueError(
            "--caption-word-loss is for a single run; --remedies runs it beside the other remedies, --study without it"
        )
    if args.remedies:
        from langbridge_training.demo.study import VALIDATION_SEEDS, run_remedies

        run_remedies(
            args.out or Path("langbridge-study"),
            seeds=args.seeds or VALIDATION_SEEDS,
            quick=args.quick,
            use_kernels=args.use_kernels,
        )
        return 0
    if args.study:
        from langbridge_training.demo.study import DEFAULT_SEEDS, run_study

        run_study(
            args.out or Path("langbridge-study"),
            seeds=args.seeds or DEFAULT_SEEDS,
            quick=args.quick,
            use_kernels=args.use_kernels,
        )
        return 0
    from langbridge_training.demo.experiment import main as run_demo

    run_demo(
        args.out or Path("langbridge-demo"),
        quick=args.quick,
        seed=args.seed,
        coefficient_activation=args.coefficient_activation,
        overrides={"caption_word_loss": args.caption_word_loss} if args.caption_word_loss else None,
        use_kernels=args.use_kernels,
    )
    return 0


def quickstart_command(args) -> int:
    """Build tiny parts locally, compose them, and chat with the folder through the pipeline."""
    if args.out is None:  # a temporary folder, removed whatever happens
        with tempfile.TemporaryDirectory(prefix="langbridge-quickstart-") as scratch:
            code = quickstart_in(Path(scratch), args.seed, args.use_kernels)
        print(f"Removed the temporary folder {scratch} (give --out DIR to keep the model)")
        return code
    return quickstart_in(args.out, args.seed, args.use_kernels)


def quickstart_in(out: Path, seed: int, use_kernels: bool | None = None) -> int:
    """The quickstart with its parts and model in `out`."""
    import torch
    from transformers import pipeline

    from ..assembly.compose import compose
    from ..assembly.tiny import random_shapes_image, save_clip_vision, save_qwen2_style_llm

    print(f"Building a tiny CLIP vision tower and a tiny Qwen2-style LLM in {out}/parts ...")
    vision = save_clip_vision(out / "parts" / "clip", full_clip=True)
    llm = save_qwen2_style_llm(out / "parts" / "qwen2")
    print("Composing them with the LangBridge projector ...")
    composed = compose(str(vision), str(llm), projector_hidden_size=64, shared_vocab_size=128, use_kernels=use_kernels)
    print_notes(composed)
    shutil.rmtree(out / "model", ignore_errors=True)  # a rerun replaces its own model
    composed.save(out / "model")

    print(f"Loading {out / 'model'} with pipeline('image-text-to-text', trust_remote_code=True) ...")
    torch.manual_seed(seed)
    chat = pipeline(
        "image-text-to-text",
        model=str(out / "model"),
        trust_remote_code=True,
        model_kwargs={"use_kernels": use_kernels},
    )
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": random_shapes_image(seed)},
                {"type": "text", "text": "What colour is the square?"},
            ],
        }
    ]
    reply = chat(text=messages, max_new_tokens=12, return_full_text=False)[0]["generated_text"]
    print("Q: What colour is the square?")
    print(f"A: {reply!r}   (untrained projector and random LLM: the words are noise; the path is real)")
    return 0


def add_commands(commands) -> None:
    p = commands.add_parser("train", help="run a training recipe (stage 1 pretrain, stage 2 sft) from a YAML config")
    p.add_argument("stage", choices=["pretrain", "sft"], help="pretrain: stage 1, projector only; sft: stage 2")
    p.add_argument("--config", required=True, type=Path, help="a recipe YAML (see configuration/)")
    p.epilog = "Further flags of SFTConfig, ModelConfig or LangBridgeArguments override the YAML, e.g. --max_steps 10."
    command(p, train_command, existing=(("config", "recipe YAML"),))

    from langbridge_training.demo.experiment import DemoSettings
    from langbridge_training.demo.study import ACTIVATIONS, DEFAULT_SEEDS, VALIDATION_SEEDS

    p = commands.add_parser(
        "demo",
        help="the paper's transfer experiment in miniature, on one CPU",
        description="The paper's transfer experiment in miniature, on one CPU (about 6-8 minutes on "
        "2 cores). Writes report.md (open it first), results.json, plots and overlays to "
        "--out, and the training details to --out/demo.log; finished stages are cached "
        "there and reused by a rerun. --study runs several seeds and both coefficient "
        "activations and summarises them.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder, stages cached there (default: langbridge-demo, or langbridge-study with --study)",
    )
    p.add_argument("--quick", action="store_true", help="small settings: minutes, a smoke test of the whole path")
    p.add_argument(
        "--seed", type=int, default=DemoSettings.seed, help="seed of the world, the models' initialisation and training"
    )
    p.add_argument(
        "--coefficient-activation",
        "--coefficients",
        choices=ACTIVATIONS,
        default=DemoSettings.coefficient_activation,
        help="LangBridge's coefficients: none (raw logits, the official code) or softmax (the paper)",
    )
    p.add_argument(
        "--caption-word-loss",
        type=non_negative,
        default=DemoSettings.caption_word_loss,
        metavar="WEIGHT",
        help="the study's best remedy: LangBridge's stage 1 also asks each image's coefficients to name its "
        "caption's words, at this weight (0.1 in the study; 0: the paper's stage 1)",
    )
    p.add_argument(
        "--study",
        action="store_true",
        help="run every --seeds seed with both activations and summarise them (summary.md; resumable)",
    )
    p.add_argument(
        "--remedies",
        action="store_true",
        help="run the study's candidate remedies for a failed transfer beside both activations (remedies.md; "
        f"resumable; default seeds: the validation seeds {' '.join(map(str, VALIDATION_SEEDS))})",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help=f"the study's seeds (default: {' '.join(map(str, DEFAULT_SEEDS))})",
    )
    add_kernels_option(p)
    command(p, demo_command)

    p = commands.add_parser("quickstart", help="compose a tiny model from locally built parts and chat with it")
    p.add_argument(
        "--out",
        type=Path,
        help="folder for the parts and the model, kept (default: a temporary folder, removed at the end)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random image and the generation")
    add_kernels_option(p)
    command(p, quickstart_command)
