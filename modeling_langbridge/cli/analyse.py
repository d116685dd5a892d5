"""Commands that read models: interpret (the words of each patch), eval (VQA scores), alignment (Figure 1)."""

from pathlib import Path

from ..errors import LangBridgeUsageError, loading
from ..model.processing_langbridge import open_image
from .common import add_kernels_option, command, defaults_of, positive_int


def load_for_analysis(model_dir, use_kernels: bool | None = None):
    """A model folder (ours through the registered Auto classes, or any LLaVA-style VLM) in eval mode; weights that
    are damaged, or pickles holding more than tensors, are refused with the folder's name, and so is a folder that
    does not hold a model transformers can load."""
    import pickle

    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..errors import damaged_safetensors_error, pickled_weights_error
    from ..files import checkpoint_files
    from ..model.modeling_langbridge import hub_kernels_wanted

    if not (Path(model_dir) / "config.json").exists():
        raise LangBridgeUsageError(
            f"{model_dir} is not a model folder (no config.json); give the folder a model was saved to."
        )
    try:
        with loading("model", model_dir):
            model = AutoModelForImageTextToText.from_pretrained(
                model_dir, use_kernels=hub_kernels_wanted(use_kernels)
            ).eval()
    except SafetensorError as error:
        raise damaged_safetensors_error(", ".join(map(str, checkpoint_files(Path(model_dir)))), error) from None
    except pickle.UnpicklingError:
        raise pickled_weights_error(", ".join(map(str, checkpoint_files(Path(model_dir))))) from None
    with loading("processor of the model", model_dir):
        processor = AutoProcessor.from_pretrained(model_dir)
    return model, processor


def vocabulary_size(model_dir) -> int | None:
    """T, the shared vocabulary's size, from a LangBridge folder's config.json (read as JSON, before any weights);
    None for other models."""
    import json

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # loading the model says what is wrong with it
    if not isinstance(config, dict) or config.get("model_type") != "langbridge":
        return None
    size = config.get("shared_vocab_size")
    if not isinstance(size, int) and isinstance(config.get("vocab_token_ids"), list):
        size = len(config["vocab_token_ids"])
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def same_file(a: Path, b: Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def interpret_command(args) -> int:
    from ..analysis.alignment import read_nearest
    from ..analysis.evaluation import answer_one
    from ..analysis.interpret import draw_overlay, read_patches
    from ..files import atomic_file, refuse_overwrite

    for flag, out in (("--out", args.out), ("--json", args.json)):
        if out is not None and same_file(out, args.image):
            raise LangBridgeUsageError(
                f"{flag} {out} is the input image; writing it would destroy the image. Give another file name."
            )
    if args.json is not None and same_file(args.out, args.json):
        raise LangBridgeUsageError(f"--out and --json are the same file {args.out}; give each its own name.")
    for out in (args.out, args.json):  # before any work
        if out is not None:
            refuse_overwrite(out, args.overwrite)
    size = vocabulary_size(args.model)
    if size is not None and args.method != "nearest" and args.top_k > size:
        raise LangBridgeUsageError(
            f"--top-k {args.top_k} is more than the {size} tokens of {args.model}'s shared vocabulary; give at most "
            f"{size}."
        )
    image = open_image(args.image)
    model, processor = load_for_analysis(args.model, args.use_kernels)
    method = args.method or ("coefficients" if model.config.model_type == "langbridge" else "nearest")
    if method == "coefficients":
        reading = read_patches(model, processor, image, top_k=args.top_k)
    else:
        reading = read_nearest(model, processor, image, top_k=args.top_k)
    answer = answer_one(model, processor, image, args.prompt) if args.prompt else None
    title = f"{args.image.name}" + (f"\nQ: {args.prompt}\nA: {answer}" if answer is not None else "")
    legend = (
        f"Left: the image on its patch grid. Right: each patch's top {args.top_k} shared-vocabulary tokens by "
        "coefficient, largest first (coefficient in grey): the words its visual token is made of."
        if method == "coefficients"
        else f"Left: the image on its patch grid. Right: the {args.top_k} words whose input embeddings are nearest "
        "to each patch's visual token (cosine similarity in grey)."
    )
    with atomic_file(args.out, args.overwrite) as scratch:
        draw_overlay(image, reading, scratch, title=title, legend=legend)
    if answer is not None:
        print(f"Q: {args.prompt}\nA: {answer}")
    tiles = f"; and {reading.tile_grid[0]}x{reading.tile_grid[1]} tiles" if hasattr(reading, "tile_grid") else ""
    print(f"Wrote {args.out} ({reading.grid[0]}x{reading.grid[1]} patches{tiles}, method: {method})")
    if args.json:
        with atomic_file(args.json, args.overwrite) as scratch:
            reading.to_json(scratch, method=method, prompt=args.prompt, answer=answer)
        print(f"Wrote {args.json}")
    return 0


def eval_command(args) -> int:
    from ..analysis.evaluation import evaluate, output_paths, read_questions
    from ..files import check_writable, refuse_overwrite

    out = args.out or args.data.with_suffix("")
    for path in output_paths(out):  # before answering anything
        check_writable(path, "file", "--out" if args.out else "beside --data, as no --out was given")
        refuse_overwrite(path, args.overwrite)
    records = read_questions(args.data)
    image_folder = args.image_folder or args.data.parent
    check_images(records, image_folder, given=args.image_folder is not None)  # before loading the model
    model, processor = load_for_analysis(args.model, args.use_kernels)
    result = evaluate(
        model,
        processor,
        records,
        image_folder,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        instruction=args.instruction,
    )
    paths = result.save(out, overwrite=args.overwrite)
    print(result.table())
    print("Wrote " + ", ".join(str(p) for p in paths))
    return 0


def check_images(records: list[dict], image_folder: Path, given: bool) -> None:
    """Every question's image exists, or the error names the folder looked in and the flag that sets it."""
    missing = [r for r in records if not (image_folder / r["image"]).exists()]
    if missing:
        where = "--image-folder" if given else "the folder of --data, as no --image-folder was given"
        raise LangBridgeUsageError(
            f"{len(missing)} of {len(records)} images are not in {image_folder} ({where}), e.g. {missing[0]['image']} "
            f"(from {missing[0]['_source']}); give the folder that holds them with --image-folder."
        )


def alignment_command(args) -> int:
    from ..analysis.alignment import alignment_curve, expand_checkpoints, plot_alignment, read_captions, save_points
    from ..files import atomic_file, refuse_overwrite

    figures = args.out.with_suffix(".json")
    if same_file(args.out, figures):
        raise LangBridgeUsageError(f"--out {args.out} ends in .json, where the figures go; give the plot a .png name.")
    for out in (args.out, figures):  # before any work
        refuse_overwrite(out, args.overwrite)
    checkpoints = expand_checkpoints(args.checkpoints)
    if len(checkpoints) < 2:
        raise LangBridgeUsageError(
            f"found {len(checkpoints)} checkpoint(s) in {args.checkpoints}; give two or more model folders "
            "(or a training output folder holding checkpoint-N folders)"
        )
    image_paths = [
        p
        for path in args.images
        for p in (sorted(path.glob("*.png")) + sorted(path.glob("*.jpg")) if path.is_dir() else [path])
    ]
    image_paths = image_paths[: args.max_images]
    if not image_paths:
        raise LangBridgeUsageError(
            f"--images {' '.join(map(str, args.images))} holds no image (*.png or *.jpg in a folder); give image files "
            "or folders of them."
        )
    captions = None
    if args.captions:
        by_name = read_captions(args.captions)
        missing = [p.name for p in image_paths if p.name not in by_name]
        if missing:
            raise LangBridgeUsageError(f"{args.captions} has no caption for {len(missing)} image(s), e.g. {missing[0]}")
        captions = [by_name[p.name] for p in image_paths]
    points = alignment_curve(checkpoints, [open_image(p) for p in image_paths], captions, use_kernels=args.use_kernels)
    for point in points:
        grounded = f", grounded {100 * point.grounded_share:.1f}%" if point.grounded_share is not None else ""
        print(f"{point.checkpoint}: step {point.step}, mean top-1 cosine {point.mean_top1_cosine:.3f}{grounded}")
    with atomic_file(args.out, args.overwrite) as plot, atomic_file(figures, args.overwrite) as saved:
        plot_alignment({"": points}, plot)
        save_points(points, saved)
    print(f"Wrote {args.out} and {figures}")
    return 0


def add_commands(commands) -> None:
    p = commands.add_parser("interpret", help="the vocabulary tokens each image patch is made of, drawn on the image")
    p.add_argument("image", type=Path, help="the image to read")
    p.add_argument(
        "--model", required=True, type=Path, help="a model folder (LangBridge, or LLaVA-style for --method nearest)"
    )
    from ..analysis.interpret import read_patches

    p.add_argument(
        "--top-k",
        type=positive_int,
        default=defaults_of(read_patches)["top_k"],
        help="tokens per patch, drawn and written to --json",
    )
    p.add_argument(
        "--prompt", help="also ask the model this about the image; the answer is printed and goes in the title and JSON"
    )
    p.add_argument(
        "--method",
        choices=["coefficients", "nearest"],
        help="coefficients: exact, LangBridge only (default for it); nearest: cosine similarity to the "
        "LLM's word embeddings, for any connector (default for others)",
    )
    p.add_argument("--out", required=True, type=Path, help="overlay PNG")
    p.add_argument("--json", type=Path, help="also write tokens, weights and the patch grid as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace existing --out / --json files")
    add_kernels_option(p)
    command(
        p,
        interpret_command,
        existing=(("image", "image file"), ("model", "model folder")),
        outputs=(("out", "file"), ("json", "file")),
    )

    p = commands.add_parser("eval", help="VQA accuracy and exact match by generation, per category")
    p.add_argument("--model", required=True, type=Path, help="a model folder")
    p.add_argument("--data", required=True, type=Path, help='JSONL: {"image", "question", "answers", "kind"?} per line')
    p.add_argument("--image-folder", type=Path, help="where relative image paths point (default: the folder of --data)")
    from ..analysis.evaluation import evaluate

    answering = defaults_of(evaluate)
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=answering["batch_size"],
        help="questions answered together (left padding)",
    )
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=answering["max_new_tokens"], help="longest answer generated"
    )
    p.add_argument(
        "--instruction",
        help='appended to each question, e.g. "Answer the question using a single word or '
        'phrase." (only if the model was trained with it; default: none)',
    )
    p.add_argument("--out", type=Path, help="prefix for predictions.jsonl / scores.json (default: beside --data)")
    p.add_argument("--overwrite", action="store_true", help="replace existing predictions and scores files")
    add_kernels_option(p)
    command(
        p,
        eval_command,
        existing=(("model", "model folder"), ("data", "questions file"), ("image_folder", "image folder")),
    )

    p = commands.add_parser(
        "alignment", help="how visual tokens approach the word embeddings over training checkpoints"
    )
    p.add_argument(
        "--checkpoints",
        required=True,
        nargs="+",
        type=Path,
        help="model folders in training order, or a training output folder with checkpoint-N folders",
    )
    p.add_argument("--images", required=True, nargs="+", type=Path, help="image files or folders")
    p.add_argument(
        "--captions", type=Path, help="captions per image: LLaVA JSON (image + conversations) or {image: caption}"
    )
    p.add_argument("--max-images", type=positive_int, default=32, help="use at most this many images")
    p.add_argument("--out", required=True, type=Path, help="plot PNG (the figures go beside it as .json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plot and its .json")
    add_kernels_option(p)
    command(
        p,
        alignment_command,
        existing=(
            ("checkpoints", "checkpoint folder"),
            ("images", "image file or folder"),
            ("captions", "captions file"),
        ),
        outputs=(("out", "file"),),
    )
