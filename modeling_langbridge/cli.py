"""The `langbridge` command line."""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` names every option's default: in its help text, or appended as "(default: X)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or nothing or not action.option_strings:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: `langbridge CMD: error: ...`, exit status 2; help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give a whole number of at least 1")
    return value


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a share; give a number from 0 to 1, such as 0.8")
    return value


# Path arguments that must exist when given, per command: (attribute, what it is).
EXISTING = {
    "compose": [("config", "hub config JSON"), ("vocab", "shared-vocabulary file")],
    "transfer": [("adapter", "adapter folder")],
    "export-adapter": [("model", "model folder")],
    "vocab build": [("corpus", "corpus file")],
    "vocab inspect": [("vocab", "shared-vocabulary file")],
    "convert-official": [("projector", "projector file"), ("checkpoint", "checkpoint folder"), ("vocab", "vocabulary file"),
                         ("vocab_matrix", "embedding matrix file")],
    "train": [("config", "recipe YAML")],
    "interpret": [("image", "image file"), ("model", "model folder")],
    "eval": [("model", "model folder"), ("data", "questions file"), ("image_folder", "image folder")],
    "alignment": [("checkpoints", "checkpoint folder"), ("images", "image file or folder"), ("captions", "captions file")],
}
# Arguments that are a local path or a Hub id.
SOURCES = {"compose": ["vision_model", "language_model"], "transfer": ["language_model", "vision_model"],
           "vocab build": ["tokenizer"], "vocab inspect": ["tokenizer"], "convert-official": ["vision_model"]}


def check_paths(command: str, args) -> None:
    """Refuse a missing path as missing, before any work and before transformers reads it as a Hub id."""
    from .files import require_source

    for name, what in EXISTING.get(command, []):
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and not Path(value).expanduser().exists():
                flag = name if name in ("image",) else "--" + name.replace("_", "-")
                raise FileNotFoundError(f"{value} does not exist ({flag}); give an existing {what}.")
    for name in SOURCES.get(command, []):
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None:
                require_source(value, name.replace("_", " "))


COMPOSE_DEFAULTS = {"projector_hidden_size": 5120, "vocab_size": 19200, "coefficients": "none", "vision_feature_layer": -2,
                    "image_grid_pinpoints": None, "vision_aspect_ratio": "anyres", "patch_merge_type": "spatial_unpad"}


def compose_settings(args) -> dict:
    """Flags first, then a hub config (`--config hub_configs/....json`), then the paper's defaults."""
    from_config = {}
    if args.config:
        try:
            config = json.loads(Path(args.config).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{args.config} is not valid JSON ({error}); give a hub_configs/*.json file.") from None
        from_config = {
            "vision_model": config.get("vision_model_name_or_path"),
            "language_model": config.get("language_model_name_or_path"),
            "projector_hidden_size": config.get("projector_hidden_size"),
            "vocab_size": config.get("shared_vocab_size"),
            "coefficients": config.get("coefficient_activation"),
            "vision_feature_layer": config.get("vision_feature_layer"),
            "image_grid_pinpoints": config.get("image_grid_pinpoints"),
            "vision_aspect_ratio": config.get("vision_aspect_ratio"),
            "patch_merge_type": config.get("patch_merge_type"),
        }
    settings = {
        key: next((v for v in (getattr(args, key), from_config.get(key), COMPOSE_DEFAULTS.get(key)) if v is not None), None)
        for key in ("vision_model", "language_model", *COMPOSE_DEFAULTS)
    }
    missing = [f"--{key.replace('_', '-')}" for key in ("vision_model", "language_model") if not settings[key]]
    if missing:
        raise ValueError(f"{' and '.join(missing)} required (or --config naming them)")
    return settings


def print_notes(composed) -> None:
    for note in composed.notes:
        print(f"- {note}")


def compose_command(args) -> int:
    from .compose import compose

    settings = compose_settings(args)
    composed = compose(
        settings.pop("vision_model"), settings.pop("language_model"), vocab=args.vocab, dtype=args.dtype,
        min_coverage=args.min_coverage, force=args.force, **settings,
    )
    print_notes(composed)
    if args.vocab:
        print(composed.mapping.report())
    composed.save(args.out)
    print(f"Saved an untrained LangBridge model to {args.out}")
    return 0


def transfer_command(args) -> int:
    from .transfer import transfer

    composed = transfer(
        args.adapter, args.language_model, args.vision_model, min_coverage=args.min_coverage, force=args.force,
        dtype=args.dtype,
    )
    print(composed.mapping.report())
    print_notes(composed)
    composed.save(args.out)
    print(f"Saved the transferred LangBridge model to {args.out}")
    return 0


def export_adapter_command(args) -> int:
    from .adapter import LangBridgeAdapter

    adapter = LangBridgeAdapter.from_model_folder(args.model)
    adapter.save_pretrained(args.out)
    print(
        f"Saved the adapter of {args.model} to {args.out}: {adapter.shared_vocab_size} vocabulary tokens, "
        f"vision features {adapter.vision_feature_size}, projector hidden size {adapter.projector_hidden_size}"
    )
    return 0


def vocab_build_command(args) -> int:
    from transformers import AutoTokenizer

    from .corpus import iter_corpus, iter_dataset_column
    from .vocab import SharedVocabulary

    from .files import refuse_overwrite

    if bool(args.corpus) == bool(args.dataset):
        raise ValueError("Give the corpus as --corpus FILE... or as --dataset NAME --column COLUMN (one of the two).")
    if len(args.tokenizer) < 2:
        raise ValueError("A shared vocabulary needs two or more tokenizers; repeat --tokenizer.")
    refuse_overwrite(args.out, args.overwrite)  # before counting, not after
    if args.dataset:
        texts, corpus_name = iter_dataset_column(args.dataset, args.column, args.split), f"{args.dataset}:{args.column}"
    else:
        texts, corpus_name = iter_corpus(args.corpus, args.text_field), ", ".join(Path(p).name for p in args.corpus)
    tokenizers = [AutoTokenizer.from_pretrained(name) for name in args.tokenizer]
    vocabulary = SharedVocabulary.build(tokenizers, texts, args.size, corpus_name=corpus_name)
    vocabulary.save(args.out, overwrite=args.overwrite)
    print(f"Saved {len(vocabulary)} shared tokens to {args.out} (from {vocabulary.source['corpus_texts']} texts)")
    print("Most frequent: " + ", ".join(f"{t!r} ({n})" for t, n in zip(vocabulary.tokens[:12], vocabulary.counts[:12])))
    return 0


def vocab_inspect_command(args) -> int:
    from transformers import AutoTokenizer

    from .vocab import SharedVocabulary

    vocabulary = SharedVocabulary.load(args.vocab)
    print(f"{args.vocab}: {len(vocabulary)} tokens")
    for key, value in vocabulary.source.items():
        print(f"  {key}: {value}")
    counts = vocabulary.counts or [None] * len(vocabulary)
    print("  first tokens: " + ", ".join(f"{t!r}" + (f" ({n})" if n is not None else "") for t, n in zip(vocabulary.tokens[:15], counts)))
    for name in args.tokenizer or []:
        print(vocabulary.map_onto(AutoTokenizer.from_pretrained(name)).report())
    return 0


def convert_official_command(args) -> int:
    from .convert_official import convert_checkpoint, convert_projector

    if bool(args.projector) == bool(args.checkpoint):
        raise ValueError("Convert either a stage-1 projector (--projector FILE --vocab FILE) or a full checkpoint (--checkpoint DIR --vocab FILE).")
    if args.projector:
        adapter = convert_projector(
            args.projector, args.vocab, vision_feature_layer=args.vision_feature_layer,
            vision_feature_select_strategy=args.vision_feature_select_strategy,
            vision_model=args.vision_model or "openai/clip-vit-large-patch14-336", trained_with=args.trained_with,
        )
        adapter.save_pretrained(args.out)
        print(f"Saved the official projector as a LangBridge adapter in {args.out} ({adapter.shared_vocab_size} tokens)")
    else:
        composed = convert_checkpoint(
            args.checkpoint, args.vocab, vocab_matrix=args.vocab_matrix, vision_model=args.vision_model,
            tiling=not args.no_tiling,
        )
        print_notes(composed)
        composed.save(args.out)
        print(f"Saved the converted model to {args.out}")
    return 0


def train_command(args) -> int:
    """A training recipe (training/pretrain.py or training/sft.py) with its YAML config; extra flags override it."""
    import importlib

    from trl import ModelConfig, SFTConfig, TrlParser

    from training.arguments import LangBridgeArguments

    recipe = importlib.import_module(f"training.{args.stage}")
    parser = TrlParser((LangBridgeArguments, SFTConfig, ModelConfig), prog="langbridge train")
    parser.error = lambda message: Parser.error(parser, message)  # one line, not the usage of every setting
    recipe.main(*parser.parse_args_and_config(["--config", str(args.config), *args.overrides]))
    return 0


def demo_command(args) -> int:
    if args.study:
        from training.study import run_study

        run_study(args.out or Path("langbridge-study"), seeds=args.seeds, quick=args.quick)
        return 0
    from training.demo import main as run_demo

    run_demo(args.out or Path("langbridge-demo"), quick=args.quick, seed=args.seed, coefficient_activation=args.coefficient_activation)
    return 0


def load_for_analysis(model_dir):
    """A model folder (ours through the registered Auto classes, or any LLaVA-style VLM) in eval mode; weights that
    are damaged, or pickles holding more than tensors, are refused with the folder's name."""
    import pickle

    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .errors import damaged_safetensors_error, pickled_weights_error
    from .files import checkpoint_files
    from .modeling_langbridge import hub_kernels_wanted

    if not (Path(model_dir) / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json); give the folder a model was saved to.")
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, use_kernels=hub_kernels_wanted()).eval()
    except SafetensorError as error:
        raise damaged_safetensors_error(", ".join(map(str, checkpoint_files(Path(model_dir)))), error) from None
    except pickle.UnpicklingError:
        raise pickled_weights_error(", ".join(map(str, checkpoint_files(Path(model_dir))))) from None
    return model, AutoProcessor.from_pretrained(model_dir)


def open_image(path: Path):
    """The image, fully decoded and checked (the processor's `open_image`, shared with training and eval)."""
    from .processing_langbridge import open_image as open_checked_image

    return open_checked_image(path)


def same_file(a: Path, b: Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def interpret_command(args) -> int:
    from .alignment import read_nearest
    from .evaluation import answer_one
    from .interpret import draw_overlay, read_patches

    for flag, out in (("--out", args.out), ("--json", args.json)):
        if out is not None and same_file(out, args.image):
            raise ValueError(f"{flag} {out} is the input image; writing it would destroy the image. Give another file name.")
    if args.json is not None and same_file(args.out, args.json):
        raise ValueError(f"--out and --json are the same file {args.out}; give each its own name.")
    image = open_image(args.image)
    model, processor = load_for_analysis(args.model)
    method = args.method or ("coefficients" if model.config.model_type == "langbridge" else "nearest")
    if method == "coefficients":
        reading = read_patches(model, processor, image, top_k=args.top_k)
    else:
        reading = read_nearest(model, processor, image, top_k=args.top_k)
    answer = answer_one(model, processor, image, args.prompt) if args.prompt else None
    title = f"{args.image.name}" + (f"\nQ: {args.prompt}\nA: {answer}" if answer is not None else "")
    legend = (f"Left: the image on its patch grid. Right: each patch's top {args.top_k} shared-vocabulary tokens by "
              "coefficient, largest first (coefficient in grey): the words its visual token is made of."
              if method == "coefficients" else
              f"Left: the image on its patch grid. Right: the {args.top_k} words whose input embeddings are nearest "
              "to each patch's visual token (cosine similarity in grey).")
    draw_overlay(image, reading, args.out, title=title, legend=legend)
    if answer is not None:
        print(f"Q: {args.prompt}\nA: {answer}")
    tiles = f"; and {reading.tile_grid[0]}x{reading.tile_grid[1]} tiles" if hasattr(reading, "tile_grid") else ""
    print(f"Wrote {args.out} ({reading.grid[0]}x{reading.grid[1]} patches{tiles}, method: {method})")
    if args.json:
        reading.to_json(args.json, method=method, prompt=args.prompt, answer=answer)
        print(f"Wrote {args.json}")
    return 0


def eval_command(args) -> int:
    from .evaluation import evaluate, read_questions

    from .evaluation import output_paths
    from .files import refuse_overwrite

    out = args.out or args.data.with_suffix("")
    for path in output_paths(out):  # before answering anything
        refuse_overwrite(path, args.overwrite)
    records = read_questions(args.data)
    image_folder = args.image_folder or args.data.parent
    check_images(records, image_folder, given=args.image_folder is not None)  # before loading the model
    model, processor = load_for_analysis(args.model)
    result = evaluate(model, processor, records, image_folder, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, instruction=args.instruction)
    paths = result.save(out, overwrite=args.overwrite)
    print(result.table())
    print("Wrote " + ", ".join(str(p) for p in paths))
    return 0


def check_images(records: list[dict], image_folder: Path, given: bool) -> None:
    """Every question's image exists, or the error names the folder looked in and the flag that sets it."""
    missing = [r for r in records if not (image_folder / r["image"]).exists()]
    if missing:
        where = "--image-folder" if given else "the folder of --data, as no --image-folder was given"
        raise FileNotFoundError(
            f"{len(missing)} of {len(records)} images are not in {image_folder} ({where}), e.g. {missing[0]['image']} "
            f"(from {missing[0]['_source']}); give the folder that holds them with --image-folder.")


def alignment_command(args) -> int:
    from .alignment import alignment_curve, expand_checkpoints, plot_alignment, read_captions, save_points

    checkpoints = expand_checkpoints(args.checkpoints)
    if len(checkpoints) < 2:
        raise ValueError(f"found {len(checkpoints)} checkpoint(s) in {args.checkpoints}; give two or more model folders "
                         "(or a training output folder holding checkpoint-N folders)")
    image_paths = [p for path in args.images for p in (sorted(path.glob("*.png")) + sorted(path.glob("*.jpg")) if path.is_dir() else [path])]
    image_paths = image_paths[: args.max_images]
    captions = None
    if args.captions:
        by_name = read_captions(args.captions)
        missing = [p.name for p in image_paths if p.name not in by_name]
        if missing:
            raise ValueError(f"{args.captions} has no caption for {len(missing)} image(s), e.g. {missing[0]}")
        captions = [by_name[p.name] for p in image_paths]
    points = alignment_curve(checkpoints, [open_image(p) for p in image_paths], captions)
    for point in points:
        grounded = f", grounded {100 * point.grounded_share:.1f}%" if point.grounded_share is not None else ""
        print(f"{point.checkpoint}: step {point.step}, mean top-1 cosine {point.mean_top1_cosine:.3f}{grounded}")
    plot_alignment({"": points}, args.out)
    save_points(points, args.out.with_suffix(".json"))
    print(f"Wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


def quickstart_command(args) -> int:
    """Build tiny parts locally, compose them, and chat with the folder through the pipeline."""
    if args.out is None:  # a temporary folder, removed whatever happens
        with tempfile.TemporaryDirectory(prefix="langbridge-quickstart-") as scratch:
            code = quickstart_in(Path(scratch), args.seed)
        print(f"Removed the temporary folder {scratch} (give --out DIR to keep the model)")
        return code
    return quickstart_in(args.out, args.seed)


def quickstart_in(out: Path, seed: int) -> int:
    """The quickstart with its parts and model in `out`."""
    import torch
    from transformers import pipeline

    from .compose import compose
    from .tiny import random_shapes_image, save_clip_vision, save_qwen2_style_llm

    print(f"Building a tiny CLIP vision tower and a tiny Qwen2-style LLM in {out}/parts ...")
    vision = save_clip_vision(out / "parts" / "clip", full_clip=True)
    llm = save_qwen2_style_llm(out / "parts" / "qwen2")
    print("Composing them with the LangBridge projector ...")
    composed = compose(str(vision), str(llm), projector_hidden_size=64, vocab_size=128)
    print_notes(composed)
    shutil.rmtree(out / "model", ignore_errors=True)  # a rerun replaces its own model
    composed.save(out / "model")

    print(f"Loading {out / 'model'} with pipeline('image-text-to-text', trust_remote_code=True) ...")
    torch.manual_seed(seed)
    chat = pipeline("image-text-to-text", model=str(out / "model"), trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "image": random_shapes_image(seed)},
                                             {"type": "text", "text": "What colour is the square?"}]}]
    reply = chat(text=messages, max_new_tokens=12, return_full_text=False)[0]["generated_text"]
    print("Q: What colour is the square?")
    print(f"A: {reply!r}   (untrained projector and random LLM: the words are noise; the path is real)")
    return 0


def add_transfer_safety(parser) -> None:
    parser.add_argument("--min-coverage", type=share, default=0.8,
                        help="least share of the vocabulary the LLM must have exactly (default 0.8)")
    parser.add_argument("--force", action="store_true", help="proceed below --min-coverage")
    parser.add_argument("--dtype", default="auto", help="auto (the LLM's), float32, bfloat16, float16")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="langbridge", description="LangBridge vision-language adapters for transformers.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("compose", help="assemble an untrained LangBridge VLM from a vision model and an LLM")
    p.add_argument("--vision-model", help="path or Hub id (CLIP, SigLIP, ...)")
    p.add_argument("--language-model", help="path or Hub id of a causal LM")
    p.add_argument("--config", type=Path, help="a hub_configs/*.json naming both models and the projector settings")
    p.add_argument("--out", required=True, type=Path, help="folder to save the composed model in")
    p.add_argument("--projector-hidden-size", type=positive_int, help="H (default 5120)")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-size", type=positive_int, help="T ordinary tokens of the LLM's tokenizer (default 19200)")
    vocab.add_argument("--vocab", type=Path, help="a shared-vocabulary JSON (langbridge vocab build)")
    p.add_argument("--coefficients", choices=["none", "softmax"], help="coefficient activation (default none)")
    p.add_argument("--vision-feature-layer", type=int, help="default -2")
    p.add_argument("--image-grid-pinpoints", metavar="GRIDS",
                   help="tile high-resolution images (LLaVA-NeXT anyres): 'llava-next' (1x2,2x1,2x2,3x1,1x3), grids in tiles "
                        "as ROWSxCOLUMNS,... or a range '(1x1),...,(3x3)'; default: one view per image")
    p.add_argument("--vision-aspect-ratio", help="with tiling: anyres (default) or anyres_max_N")
    p.add_argument("--patch-merge-type", choices=["spatial_unpad", "spatial", "flat"],
                   help="with tiling: spatial_unpad (default: padding cut, a learned newline per row), spatial or flat")
    add_transfer_safety(p)
    p.set_defaults(run=compose_command)

    p = commands.add_parser("transfer", help="attach a trained adapter to another LLM, without pretraining again")
    p.add_argument("--adapter", required=True, type=Path, help="an adapter folder (export-adapter, convert-official)")
    p.add_argument("--language-model", required=True, help="path or Hub id of the new causal LM")
    p.add_argument("--vision-model", help="vision model (default: the one the adapter records)")
    p.add_argument("--out", required=True, type=Path, help="folder to save the new model in")
    add_transfer_safety(p)
    p.set_defaults(run=transfer_command)

    p = commands.add_parser("export-adapter", help="save the projector of a model folder as a portable adapter")
    p.add_argument("--model", required=True, type=Path, help="a LangBridge model folder (e.g. a stage-1 output_dir)")
    p.add_argument("--out", required=True, type=Path, help="folder to save the adapter in")
    p.set_defaults(run=export_adapter_command)

    vocab_parser = commands.add_parser("vocab", help="build or inspect shared vocabularies")
    vocab_commands = vocab_parser.add_subparsers(dest="vocab_command", required=True)
    p = vocab_commands.add_parser("build", help="tokens shared by several tokenizers, ranked by corpus frequency")
    p.add_argument("--tokenizer", action="append", required=True, help="path or Hub id; give two or more")
    p.add_argument("--corpus", nargs="+", help=".txt (a text per line), .jsonl or LLaVA .json files")
    p.add_argument("--text-field", help="the text field of JSON records (default: LLaVA conversations, messages, text)")
    p.add_argument("--dataset", help="a datasets name or path, streamed")
    p.add_argument("--column", default="text", help="with --dataset: the text column")
    p.add_argument("--split", default="train", help="with --dataset: the split")
    p.add_argument("--size", type=positive_int, required=True, help="T, the number of tokens to keep")
    p.add_argument("--out", required=True, type=Path, help="the vocabulary JSON to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=vocab_build_command)
    p = vocab_commands.add_parser("inspect", help="show a vocabulary and its coverage on tokenizers")
    p.add_argument("vocab", type=Path, help="a shared-vocabulary JSON (langbridge vocab build)")
    p.add_argument("--tokenizer", action="append", help="report coverage on this tokenizer (repeatable)")
    p.set_defaults(run=vocab_inspect_command)

    p = commands.add_parser("convert-official", help="convert checkpoints of the official LangBridge code")
    p.add_argument("--projector", type=Path, help="a stage-1 mm_projector.bin (-> an adapter)")
    p.add_argument("--checkpoint", type=Path, help="a full checkpoint folder (-> a model folder)")
    p.add_argument("--vocab", required=True, type=Path, help="its vocabulary JSON (token -> id)")
    p.add_argument("--vocab-matrix", type=Path, help="the official embedding matrix (.pt), if not beside the checkpoint")
    p.add_argument("--vision-model", help="vision tower (default: the checkpoint's mm_vision_tower / CLIP ViT-L/14-336)")
    p.add_argument("--vision-feature-layer", type=int, default=-2, help="the vision tower's layer the projector reads")
    p.add_argument("--vision-feature-select-strategy", choices=["default", "full"], default="default",
                   help="default: patch tokens only, CLS dropped (official); full: keep CLS")
    p.add_argument("--trained-with", help="the LLM the projector was trained with, for the record")
    p.add_argument("--no-tiling", action="store_true",
                   help="convert a LLaVA-NeXT anyres checkpoint for a single view (fewer tokens; not the official numerics)")
    p.add_argument("--out", required=True, type=Path, help="folder to save the adapter (--projector) or model (--checkpoint) in")
    p.set_defaults(run=convert_official_command)

    p = commands.add_parser("train", help="run a training recipe (stage 1 pretrain, stage 2 sft) from a YAML config")
    p.add_argument("stage", choices=["pretrain", "sft"], help="pretrain: stage 1, projector only; sft: stage 2")
    p.add_argument("--config", required=True, type=Path, help="a recipe YAML (see configuration/)")
    p.epilog = "Further flags of SFTConfig, ModelConfig or LangBridgeArguments override the YAML, e.g. --max_steps 10."
    p.set_defaults(run=train_command)

    from training.demo import DemoSettings
    from training.study import ACTIVATIONS, DEFAULT_SEEDS

    p = commands.add_parser("demo", help="the paper's transfer experiment in miniature, on one CPU",
                            description="The paper's transfer experiment in miniature, on one CPU (about 6-8 minutes on "
                                        "2 cores). Writes report.md (open it first), results.json, plots and overlays to "
                                        "--out, and the training details to --out/demo.log; finished stages are cached "
                                        "there and reused by a rerun.")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder, stages cached there (default: langbridge-demo, or langbridge-study with --study)")
    p.add_argument("--quick", action="store_true", help="small settings: minutes, a smoke test of the whole path")
    p.add_argument("--seed", type=int, default=0, help="seed of the world, the models' initialisation and training")
    p.add_argument("--coefficient-activation", "--coefficients", choices=ACTIVATIONS, default=DemoSettings.coefficient_activation,
                   help="LangBridge's coefficient activation: none (raw logits, the official code) or softmax (the paper)")
    p.add_argument("--study", action="store_true",
                   help="run every --seeds seed with both activations and summarise them (summary.md; resumable)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="the study's seeds")
    p.set_defaults(run=demo_command)

    p = commands.add_parser("interpret", help="the vocabulary tokens each image patch is made of, drawn on the image")
    p.add_argument("image", type=Path, help="the image to read")
    p.add_argument("--model", required=True, type=Path, help="a model folder (LangBridge, or LLaVA-style for --method nearest)")
    p.add_argument("--top-k", type=positive_int, default=3, help="tokens per patch, drawn and written to --json")
    p.add_argument("--prompt", help="also ask the model this about the image; the answer is printed and goes in the "
                                    "title and JSON")
    p.add_argument("--method", choices=["coefficients", "nearest"],
                   help="coefficients: exact, LangBridge only (default for it); nearest: cosine similarity to the "
                        "LLM's word embeddings, for any connector (default for others)")
    p.add_argument("--out", required=True, type=Path, help="overlay PNG")
    p.add_argument("--json", type=Path, help="also write tokens, weights and the patch grid as JSON")
    p.set_defaults(run=interpret_command)

    p = commands.add_parser("eval", help="VQA accuracy and exact match by generation, per category")
    p.add_argument("--model", required=True, type=Path, help="a model folder")
    p.add_argument("--data", required=True, type=Path, help='JSONL: {"image", "question", "answers", "kind"?} per line')
    p.add_argument("--image-folder", type=Path, help="where relative image paths point (default: the folder of --data)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="questions answered together (left padding)")
    p.add_argument("--max-new-tokens", type=positive_int, default=16, help="longest answer generated")
    p.add_argument("--instruction", help='appended to each question, e.g. "Answer the question using a single word or '
                                         'phrase." (only if the model was trained with it; default: none)')
    p.add_argument("--out", type=Path, help="prefix for predictions.jsonl / scores.json (default: beside --data)")
    p.add_argument("--overwrite", action="store_true", help="replace existing predictions and scores files")
    p.set_defaults(run=eval_command)

    p = commands.add_parser("alignment", help="how visual tokens approach the word embeddings over training checkpoints")
    p.add_argument("--checkpoints", required=True, nargs="+", type=Path,
                   help="model folders in training order, or a training output folder with checkpoint-N folders")
    p.add_argument("--images", required=True, nargs="+", type=Path, help="image files or folders")
    p.add_argument("--captions", type=Path, help="captions per image: LLaVA JSON (image + conversations) or {image: caption}")
    p.add_argument("--max-images", type=positive_int, default=32, help="use at most this many images")
    p.add_argument("--out", required=True, type=Path, help="plot PNG (the figures go beside it as .json)")
    p.set_defaults(run=alignment_command)

    p = commands.add_parser("quickstart", help="compose a tiny model from locally built parts and chat with it")
    p.add_argument("--out", type=Path, help="folder for the parts and the model, kept (default: a temporary folder, "
                                            "removed at the end)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random image and the generation")
    p.set_defaults(run=quickstart_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .notices import quiet_known_notices

    quiet_known_notices()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = unknown
    command = args.command + (f" {args.vocab_command}" if args.command == "vocab" else "")
    try:
        check_paths(command, args)
        return args.run(args)
    except Exception as error:  # a user's mistake is one line and status 2; anything else is a bug: traceback
        from .errors import user_error_message

        message = user_error_message(error)
        if message is None:
            raise
        print(f"langbridge {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
