"""Commands that train: the recipes (train), the demo, and the quickstart."""

import argparse
import shutil
import tempfile
from pathlib import Path

from ..errors import LangBridgeUsageError
from .common import Parser, add_kernels_option, command, print_notes


def train_command(args) -> int:
    """A training recipe (langbridge_training.pretrain or .sft) with its YAML config; extra flags override it."""
    import importlib

    from trl import ModelConfig, SFTConfig, TrlParser

    from langbridge_training.arguments import LangBridgeArguments, parse_recipe

    recipe = importlib.import_module(f"langbridge_training.{args.stage}")
    parser = TrlParser((LangBridgeArguments, SFTConfig, ModelConfig), prog="langbridge train")
    parser.error = lambda message: Parser.error(parser, message)  # one line, not the usage of every setting
    recipe.main(*parse_recipe(args.config, args.overrides, parser))
    return 0


def owned_by(check, what: type):
    """An argparse type: the text as a number (`what`: int or float), checked by the function that owns the setting;
    a refusal is argparse's one line, `argument --flag: ...`."""

    def parse(text: str):
        try:
            value = what(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {'whole number' if what is int else 'number'}"
            ) from None
        try:
            return check(value)
        except LangBridgeUsageError as error:
            accepted = getattr(error, "accepted", None)
            message = f"{value!r} is not allowed; give {accepted}" if accepted else str(error)
            raise argparse.ArgumentTypeError(message) from None

    return parse


def demo_command(args) -> int:
    """The demo, the study or the remedies; a flag that the chosen one would ignore is refused, before any work."""
    from langbridge_training.demo.study import check_seeds

    several = "--study" if args.study else "--remedies" if args.remedies else None
    if args.study and args.remedies:
        raise LangBridgeUsageError(
            "--study and --remedies are separate runs; give one of them (each may take --seeds)."
        )
    remedy_flags = stage1_remedy_flags()
    ignored = {
        "--seed": several and args.seed is not None,
        "--coefficient-activation": several and args.coefficient_activation is not None,
        **{flag: several and getattr(args, name) is not None for flag, name in remedy_flags.items()},
        "--paper-stage-1": several and args.paper_stage_1,
    }
    for flag, refused in ignored.items():
        if refused:
            runs = "runs both activations" if flag == "--coefficient-activation" else "runs without it"
            if args.remedies:  # what the remedies do with the setting
                runs = {
                    "--caption-word-loss": "runs it beside the other remedies",
                    "--coefficient-spread-loss": "runs it, with the caption-word loss, among the remedies",
                    "--langbridge-pretrain-lr": "runs its own rates among the remedies",
                    "--paper-stage-1": "runs it beside every remedy",
                }.get(flag, runs)
            elif flag == "--paper-stage-1":
                runs = "runs it, with both activations"
            raise LangBridgeUsageError(
                f"{flag} is for a single demo run; {several} {runs}"
                + (" (give its seeds with --seeds)." if flag == "--seed" else "; leave it out.")
            )
    if args.paper_stage_1:
        for flag, name in remedy_flags.items():
            if getattr(args, name) is not None:
                raise LangBridgeUsageError(
                    f"--paper-stage-1 trains LangBridge's stage 1 with the caption loss alone at stage 1's rate; "
                    f"{flag} changes that stage 1. Give one of them."
                )
    if args.seeds is not None and not several:
        raise LangBridgeUsageError("--seeds is for --study or --remedies; a single demo run takes one seed: --seed N.")
    if args.seeds is not None:
        check_seeds(args.seeds, "--seeds")
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

    settings = demo_settings(args)
    run_demo(
        args.out or Path("langbridge-demo"),
        quick=args.quick,
        seed=settings["seed"],
        overrides={name: value for name, value in settings.items() if name != "seed"},
        use_kernels=args.use_kernels,
    )
    return 0


def stage1_remedy_flags() -> dict[str, str]:
    """The demo's flags that take LangBridge's stage 1 away from the paper's, by the setting each sets: the
    coefficient losses (caption_words.LOSSES) and the stage-1 rate."""
    from langbridge_training.caption_words import LOSSES as COEFFICIENT_LOSSES

    return {"--" + name.replace("_", "-"): name for name in (*COEFFICIENT_LOSSES, "langbridge_pretrain_lr")}


def demo_settings(args) -> dict:
    """The DemoSettings fields a single demo run's flags set: the seed, then --paper-stage-1's, then each flag given
    (DemoSettings' defaults, the study's remedy, for the rest)."""
    from langbridge_training.demo.experiment import PAPER_STAGE1, DemoSettings

    given = {name: getattr(args, name) for name in ("coefficient_activation", *stage1_remedy_flags().values())}
    return (
        {"seed": DemoSettings.seed if args.seed is None else args.seed}
        | (PAPER_STAGE1 if args.paper_stage_1 else {})
        | {name: value for name, value in given.items() if value is not None}
    )


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

    from langbridge_training.arguments import check_learning_rate
    from langbridge_training.caption_words import check_weight
    from langbridge_training.demo.experiment import DemoSettings, check_seed
    from langbridge_training.demo.study import ACTIVATIONS, DEFAULT_SEEDS, VALIDATION_SEEDS

    p = commands.add_parser(
        "demo",
        help="the paper's transfer experiment in miniature, on one CPU",
        description="The paper's transfer experiment in miniature, on one CPU (about 9 minutes on "
        "2 cores). LangBridge's stage 1 is the study's remedy (softmax coefficients, a caption-word loss of 1, "
        "stage-1 rate 5e-3); B is also run with the paper's stage 1, a row of the report. Writes report.md (open it "
        "first), results.json, plots and overlays to --out, and the training details to --out/demo.log; finished "
        "stages are cached there and reused by a rerun. --study runs several seeds and both coefficient "
        "activations with the paper's stage 1 and summarises them.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder, stages cached there (default: langbridge-demo, or langbridge-study with --study)",
    )
    p.add_argument("--quick", action="store_true", help="small settings: minutes, a smoke test of the whole path")
    # A single run's settings default to None here, so that a flag --study or --remedies would ignore is refused.
    p.add_argument(
        "--seed",
        type=owned_by(check_seed, int),
        default=None,
        help=f"seed of the world, the models' initialisation and training, a single run's (default: {DemoSettings.seed})",
    )
    p.add_argument(
        "--coefficient-activation",
        "--coefficients",
        choices=ACTIVATIONS,
        default=None,
        help="LangBridge's coefficients: none (raw logits, the official code) or softmax (the paper); a single run's "
        f"(default: {DemoSettings.coefficient_activation})",
    )
    p.add_argument(
        "--caption-word-loss",
        type=owned_by(check_weight, float),
        default=None,
        metavar="WEIGHT",
        help="the study's remedy: LangBridge's stage 1 also asks each image's coefficients to name its "
        "caption's words, at this weight, from 0 to 100 (0: off, as the paper's stage 1); a single run's "
        f"(default: {DemoSettings.caption_word_loss:g}, the study's choice)",
    )
    p.add_argument(
        "--coefficient-spread-loss",
        type=owned_by(lambda value: check_weight(value, "coefficient_spread_loss"), float),
        default=None,
        metavar="WEIGHT",
        help="a remedy tried in the study (README: it did not hold): LangBridge's stage 1 also asks each visual "
        "token to mix few shared words, at this weight, from 0 to 100 (0: the paper's stage 1); a single run's "
        f"(default: {DemoSettings.coefficient_spread_loss:g})",
    )
    p.add_argument(
        "--langbridge-pretrain-lr",
        type=owned_by(lambda value: check_learning_rate(value, "langbridge_pretrain_lr"), float),
        default=None,
        metavar="RATE",
        help="stage 1's learning rate for the LangBridge runs (B, C); a single run's (default: "
        f"{DemoSettings.langbridge_pretrain_lr:g}, the study's choice for softmax coefficients; LLaVA's runs and "
        f"--paper-stage-1 use stage 1's rate, {DemoSettings.pretrain_lr:g})",
    )
    p.add_argument(
        "--paper-stage-1",
        action="store_true",
        help="train LangBridge's stage 1 (B, C) as the paper does: the caption loss alone at stage 1's rate, with "
        "raw-logit coefficients unless --coefficients says otherwise (the demo's default before the study's "
        "remedy; a single run's)",
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
        type=owned_by(check_seed, int),
        nargs="+",
        default=None,
        help=f"the seeds of --study (default: {' '.join(map(str, DEFAULT_SEEDS))}) or --remedies, each once",
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
