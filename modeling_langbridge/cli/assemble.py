"""Commands that build models: compose, transfer, export-adapter, vocab build / inspect, convert-official."""

from pathlib import Path

from ..errors import LangBridgeUsageError
from .common import add_kernels_option, command, defaults_of, positive_int, print_notes, share

EXISTING_VOCAB = (("vocab", "shared-vocabulary file"),)


# compose()'s settings that have a flag; a flag left out falls back to --config, then to compose()'s default.
COMPOSE_FLAGS = (
    "projector_hidden_size",
    "projector_hidden_act",
    "shared_vocab_size",
    "coefficient_activation",
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "image_grid_pinpoints",
    "vision_aspect_ratio",
    "patch_merge_type",
)


def compose_settings(args) -> dict:
    """Flags first, then a hub config (`--config hub_configs/....json`, every key it holds), then compose()'s
    defaults (by leaving the argument out)."""
    from ..assembly.hub_configs import read_hub_config

    settings = read_hub_config(args.config) if args.config else {}
    for name in ("vision_model", "language_model", *COMPOSE_FLAGS):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    missing = [f"--{key.replace('_', '-')}" for key in ("vision_model", "language_model") if not settings.get(key)]
    if missing:
        raise LangBridgeUsageError(f"{' and '.join(missing)} required (or --config naming them)")
    return settings


def compose_command(args) -> int:
    from ..assembly.compose import compose
    from ..assembly.hub_configs import derived_differences

    settings = compose_settings(args)
    composed = compose(
        settings.pop("vision_model"),
        settings.pop("language_model"),
        vocab=args.vocab,
        dtype=args.dtype,
        min_coverage=args.min_coverage,
        force=args.force,
        use_kernels=args.use_kernels,
        **settings,
    )
    if args.config:
        composed.notes += derived_differences(args.config, composed.model.config)
    print_notes(composed)
    if args.vocab:
        print(composed.mapping.report())
    composed.save(args.out)
    print(f"Saved an untrained LangBridge model to {args.out}")
    return 0


def transfer_command(args) -> int:
    from ..assembly.transfer import transfer

    composed = transfer(
        args.adapter,
        args.language_model,
        args.vision_model,
        min_coverage=args.min_coverage,
        force=args.force,
        dtype=args.dtype,
        use_kernels=args.use_kernels,
    )
    print(composed.mapping.report())
    print_notes(composed)
    composed.save(args.out)
    print(f"Saved the transferred LangBridge model to {args.out}")
    return 0


def export_adapter_command(args) -> int:
    from ..assembly.adapter import LangBridgeAdapter

    adapter = LangBridgeAdapter.from_model_folder(args.model)
    adapter.save_pretrained(args.out)
    print(
        f"Saved the adapter of {args.model} to {args.out}: {adapter.shared_vocab_size} vocabulary tokens, "
        f"vision features {adapter.vision_feature_size}, projector hidden size {adapter.projector_hidden_size}"
    )
    return 0


def load_tokenizer(name):
    from transformers import AutoTokenizer

    from ..errors import loading

    with loading("tokenizer", name):
        return AutoTokenizer.from_pretrained(name)


def vocab_build_command(args) -> int:
    from ..assembly.corpus import iter_corpus, iter_dataset_column
    from ..assembly.vocab import SharedVocabulary
    from ..files import refuse_overwrite

    if bool(args.corpus) == bool(args.dataset):
        raise LangBridgeUsageError(
            "Give the corpus as --corpus FILE... or as --dataset NAME --column COLUMN (one of the two)."
        )
    if len(args.tokenizer) < 2:
        raise LangBridgeUsageError("A shared vocabulary needs two or more tokenizers; repeat --tokenizer.")
    refuse_overwrite(args.out, args.overwrite)  # before counting, not after
    if args.dataset:
        texts, corpus_name = iter_dataset_column(args.dataset, args.column, args.split), f"{args.dataset}:{args.column}"
    else:
        texts, corpus_name = iter_corpus(args.corpus, args.text_field), ", ".join(Path(p).name for p in args.corpus)
    tokenizers = [load_tokenizer(name) for name in args.tokenizer]
    vocabulary = SharedVocabulary.build(tokenizers, texts, args.size, corpus_name=corpus_name)
    vocabulary.save(args.out, overwrite=args.overwrite)
    print(f"Saved {len(vocabulary)} shared tokens to {args.out} (from {vocabulary.source['corpus_texts']} texts)")
    print("Most frequent: " + ", ".join(f"{t!r} ({n})" for t, n in zip(vocabulary.tokens[:12], vocabulary.counts[:12])))
    return 0


def vocab_inspect_command(args) -> int:
    from ..assembly.vocab import SharedVocabulary

    vocabulary = SharedVocabulary.load(args.vocab)
    print(f"{args.vocab}: {len(vocabulary)} tokens")
    for key, value in vocabulary.source.items():
        print(f"  {key}: {value}")
    counts = vocabulary.counts or [None] * len(vocabulary)
    print(
        "  first tokens: "
        + ", ".join(f"{t!r}" + (f" ({n})" if n is not None else "") for t, n in zip(vocabulary.tokens[:15], counts))
    )
    for name in args.tokenizer or []:
        print(vocabulary.map_onto(load_tokenizer(name)).report())
    return 0


def convert_official_command(args) -> int:
    from ..assembly.convert_official import convert_checkpoint, convert_projector

    if bool(args.projector) == bool(args.checkpoint):
        raise LangBridgeUsageError(
            "Convert either a stage-1 projector (--projector FILE --vocab FILE) or a full checkpoint "
            "(--checkpoint DIR --vocab FILE)."
        )
    if args.projector:
        adapter = convert_projector(
            args.projector,
            args.vocab,
            vision_feature_layer=args.vision_feature_layer,
            vision_feature_select_strategy=args.vision_feature_select_strategy,
            **({"vision_model": args.vision_model} if args.vision_model else {}),
            trained_with=args.trained_with,
        )
        adapter.save_pretrained(args.out)
        print(
            f"Saved the official projector as a LangBridge adapter in {args.out} ({adapter.shared_vocab_size} tokens)"
        )
    else:
        composed = convert_checkpoint(
            args.checkpoint,
            args.vocab,
            vocab_matrix=args.vocab_matrix,
            vision_model=args.vision_model,
            tiling=not args.no_tiling,
            use_kernels=args.use_kernels,
        )
        print_notes(composed)
        composed.save(args.out)
        print(f"Saved the converted model to {args.out}")
    return 0


def add_transfer_safety(parser, defaults: dict) -> None:
    parser.add_argument(
        "--min-coverage",
        type=share,
        default=defaults["min_coverage"],
        help="least share of the vocabulary the LLM must have exactly",
    )
    parser.add_argument("--force", action="store_true", help="proceed below --min-coverage")
    from ..assembly.compose import DTYPES

    parser.add_argument(
        "--dtype", default=defaults["dtype"], choices=DTYPES, help="the weights' dtype; auto: the LLM's own"
    )


def add_commands(commands) -> None:
    from ..assembly.compose import compose
    from ..assembly.convert_official import convert_projector

    defaults = defaults_of(compose)

    def default(name):
        return f"(default: {defaults[name]})"

    p = commands.add_parser("compose", help="assemble an untrained LangBridge VLM from a vision model and an LLM")
    p.add_argument("--vision-model", help="path or Hub id (CLIP, SigLIP, ...)")
    p.add_argument("--language-model", help="path or Hub id of a causal LM")
    p.add_argument("--config", type=Path, help="a hub_configs/*.json naming both models and the projector settings")
    p.add_argument("--out", required=True, type=Path, help="folder to save the composed model in")
    p.add_argument("--projector-hidden-size", type=positive_int, help=f"H {default('projector_hidden_size')}")
    p.add_argument("--projector-hidden-act", help=f"the projector MLP's activation {default('projector_hidden_act')}")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument(
        "--shared-vocab-size",
        "--vocab-size",
        type=positive_int,
        help=f"T ordinary tokens of the LLM's tokenizer {default('shared_vocab_size')}",
    )
    vocab.add_argument("--vocab", type=Path, help="a shared-vocabulary JSON (langbridge vocab build)")
    p.add_argument(
        "--coefficient-activation",
        "--coefficients",
        choices=["none", "softmax"],
        help=f"none: raw logits (the official code); softmax (the paper) {default('coefficient_activation')}",
    )
    p.add_argument(
        "--vision-feature-layer",
        type=int,
        help=f"the vision tower's hidden-state index the projector reads {default('vision_feature_layer')}",
    )
    p.add_argument(
        "--vision-feature-select-strategy",
        choices=["default", "full"],
        help="default: drop the tower's CLS token; full: keep every token (default: from the tower)",
    )
    p.add_argument(
        "--image-grid-pinpoints",
        metavar="GRIDS",
        help="tile high-resolution images (LLaVA-NeXT anyres): 'llava-next' (1x2,2x1,2x2,3x1,1x3), grids in "
        "tiles as ROWSxCOLUMNS,... or a range '(1x1),...,(3x3)'; default: one view per image",
    )
    p.add_argument(
        "--vision-aspect-ratio", help=f"with tiling: anyres or anyres_max_N {default('vision_aspect_ratio')}"
    )
    p.add_argument(
        "--patch-merge-type",
        choices=["spatial_unpad", "spatial", "flat"],
        help="with tiling: spatial_unpad (padding cut, a learned newline per row), spatial or flat "
        + default("patch_merge_type"),
    )
    add_transfer_safety(p, defaults)
    add_kernels_option(p)
    command(
        p,
        compose_command,
        existing=(("config", "hub config JSON"), *EXISTING_VOCAB),
        sources=("vision_model", "language_model"),
        outputs=(("out", "folder"),),
    )

    p = commands.add_parser("transfer", help="attach a trained adapter to another LLM, without pretraining again")
    p.add_argument("--adapter", required=True, type=Path, help="an adapter folder (export-adapter, convert-official)")
    p.add_argument("--language-model", required=True, help="path or Hub id of the new causal LM")
    p.add_argument("--vision-model", help="vision model (default: the one the adapter records)")
    p.add_argument("--out", required=True, type=Path, help="folder to save the new model in")
    add_transfer_safety(p, defaults)
    add_kernels_option(p)
    command(
        p,
        transfer_command,
        existing=(("adapter", "adapter folder"),),
        sources=("language_model", "vision_model"),
        outputs=(("out", "folder"),),
    )

    p = commands.add_parser("export-adapter", help="save the projector of a model folder as a portable adapter")
    p.add_argument("--model", required=True, type=Path, help="a LangBridge model folder (e.g. a stage-1 output_dir)")
    p.add_argument("--out", required=True, type=Path, help="folder to save the adapter in")
    command(p, export_adapter_command, existing=(("model", "model folder"),), outputs=(("out", "folder"),))

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
    command(
        p,
        vocab_build_command,
        existing=(("corpus", "corpus file"),),
        sources=("tokenizer",),
        outputs=(("out", "file"),),
    )
    p = vocab_commands.add_parser("inspect", help="show a vocabulary and its coverage on tokenizers")
    p.add_argument("vocab", type=Path, help="a shared-vocabulary JSON (langbridge vocab build)")
    p.add_argument("--tokenizer", action="append", help="report coverage on this tokenizer (repeatable)")
    command(p, vocab_inspect_command, existing=EXISTING_VOCAB, sources=("tokenizer",))

    p = commands.add_parser("convert-official", help="convert checkpoints of the official LangBridge code")
    p.add_argument("--projector", type=Path, help="a stage-1 mm_projector.bin (-> an adapter)")
    p.add_argument("--checkpoint", type=Path, help="a full checkpoint folder (-> a model folder)")
    p.add_argument("--vocab", required=True, type=Path, help="its vocabulary JSON (token -> id)")
    p.add_argument(
        "--vocab-matrix", type=Path, help="the official embedding matrix (.pt), if not beside the checkpoint"
    )
    p.add_argument(
        "--vision-model", help="vision tower (default: the checkpoint's mm_vision_tower / CLIP ViT-L/14-336)"
    )
    official = defaults_of(convert_projector)
    p.add_argument(
        "--vision-feature-layer",
        type=int,
        default=official["vision_feature_layer"],
        help="the vision tower's layer the projector reads",
    )
    p.add_argument(
        "--vision-feature-select-strategy",
        choices=["default", "full"],
        default=official["vision_feature_select_strategy"],
        help="default: patch tokens only, CLS dropped (official); full: keep CLS",
    )
    p.add_argument("--trained-with", help="the LLM the projector was trained with, for the record")
    p.add_argument(
        "--no-tiling",
        action="store_true",
        help="convert a LLaVA-NeXT anyres checkpoint for a single view (fewer tokens; not the official numerics)",
    )
    add_kernels_option(p)
    p.add_argument(
        "--out", required=True, type=Path, help="folder to save the adapter (--projector) or model (--checkpoint) in"
    )
    command(
        p,
        convert_official_command,
        existing=(
            ("projector", "projector file"),
            ("checkpoint", "checkpoint folder"),
            ("vocab", "vocabulary file"),
            ("vocab_matrix", "embedding matrix file"),
        ),
        sources=("vision_model",),
        outputs=(("out", "folder"),),
    )
