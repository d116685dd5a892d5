"""`langbridge demo`: the paper's transfer experiment in miniature, on one CPU.

A synthetic world of coloured shapes, a small vision encoder trained on it, and two small LLMs of different
families, tokenizers and widths trained on its text. Then, all SFT'd the same way on LLM-2 and scored on
held-out questions by generation:

    A  LLaVA's MLP connector (transformers' LlavaForConditionalGeneration) pretrained on LLM-2, then SFT
    B  LangBridge pretrained with LLM-1, moved to LLM-2 without pretraining (`transfer`), then SFT
    C  LangBridge pretrained on LLM-2, then SFT
    D  each connector SFT'd from scratch, no stage 1

LangBridge's stage 1 (B, C) is the study's remedy by default (DEFAULT_STAGE1_REASON); B then also runs with the
paper's stage 1 (PAPER_STAGE1), a row of the report beside it. Every step runs through the project's own code
(compose, the pretrain and SFT recipes, transfer, eval). Finished stages are cached in the output folder and reused
by a second run with the same settings.
"""

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from modeling_langbridge.model.modeling_langbridge import hub_kernels_wanted

from ..arguments import SettingError, check_learning_rate
from ..caption_words import LOSSES as COEFFICIENT_LOSSES
from ..caption_words import check_weight
from .console import Console

# A seed is a whole number from 0 to MAX_SEED: transformers' set_seed hands it to numpy, which takes 0 to 2**32 - 1,
# and the demo seeds its parts with the seed plus up to 12; 2**31 - 1 (the largest 32-bit signed number) leaves room.
MAX_SEED = 2**31 - 1
SEED_ACCEPTED = f"a whole number from 0 to {MAX_SEED}"


def check_seed(value, setting: str = "seed", source: str | None = None) -> int:
    """A demo seed, refused (SettingError) unless a whole number from 0 to MAX_SEED."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise SettingError(setting, value, SEED_ACCEPTED, source)
    return value


RUNS = {  # name: (connector, LLM, stage 1, description)
    "A": ("llava", "llm2", "pretrain on LLM-2", "LLaVA MLP connector, pretrained on LLM-2"),
    "B": (
        "langbridge",
        "llm2",
        "pretrain on LLM-1, transfer",
        "LangBridge, pretrained with LLM-1, transferred to LLM-2",
    ),
    "C": ("langbridge", "llm2", "pretrain on LLM-2", "LangBridge, pretrained on LLM-2"),
    "D-llava": ("llava", "llm2", "none", "LLaVA MLP connector, no stage 1"),
    "D-langbridge": ("langbridge", "llm2", "none", "LangBridge, no stage 1"),
}


# Why the demo's LangBridge stage 1 is what it is, as the report says it. Every choice was made on the study's decision
# seeds (0, 1, 2) and their validation split only; the report seeds (3-9) and the test split only report (README, "The
# study").
DEFAULT_STAGE1_REASON = (
    "with the paper's stage 1 the transferred adapter B reached 95% of A on 1 of the 7 report seeds (3-9, test split; "
    "mean 86%, lowest 75%), while softmax coefficients with a caption-word loss of 1 at stage-1 rate 5e-3, chosen on "
    "the decision seeds (0, 1, 2; validation split; mean 114% of A there), reached it on 7 of 7 (mean 102%, lowest "
    "96%; packages of 2026-12-06). It gives SFT a better start, not a pretraining-free transfer: right after `transfer` "
    "no variant's B captions on LLM-2 (0-2.4% of test images), and this one hardly captions even on LLM-1"
)


@dataclass
class DemoSettings:
    seed: int = 0
    image_size: int = 48
    patch_size: int = 16  # a 3 x 3 grid: each patch column is one of the world's three columns
    train_scenes: int = 3000
    validation_scenes: int = 150
    test_scenes: int = 250
    vision_hidden: int = 64
    vision_layers: int = 4
    vision_steps: int = 500
    tokenizer_vocab: int = 1000
    llm1_hidden: int = 64  # LLM-1: Qwen2-style, byte-level BPE (the small source, like Qwen2-0.5B)
    llm1_layers: int = 2
    llm2_hidden: int = 96  # LLM-2: Llama-style, SentencePiece-style (the wider target)
    llm2_layers: int = 2
    # Tiny LLMs learn to read their context (copy a word list into a caption, answer from a caption) abruptly,
    # after a few thousand steps: this is most of the demo's time, and what makes stage 1 worth anything.
    text_steps: int = 4000
    text_lr: float = 5e-3
    shared_vocab_size: int = 256
    projector_hidden: int = 128
    # Stage 1 sees every training caption several times; stage 2 is a short budget (25 steps of 16: 400
    # conversations), as instruction data is scarce next to caption data. With a long stage 2 the controls catch
    # up (the connector is learnt from the answers alone) and stage 1 stops mattering. Chosen on the validation
    # split (seed 0): at 25 steps the controls trail by 12-14 points, at 50 by 5-7, at 100-150 by 0-4.
    pretrain_steps: int = 1500
    pretrain_lr: float = 1e-3
    pretrain_checkpoints: int = 4  # saved along stage 1, for `alignment`
    sft_steps: int = 25
    sft_lr: float = 5e-4
    batch_size: int = 16
    # LangBridge's stage 1 (runs B and C): the study's remedy, chosen on its decision seeds (DEFAULT_STAGE1_REASON);
    # PAPER_STAGE1 gives the paper's, which the report keeps beside it as the row "B (paper's stage 1)". Stages that
    # involve a LangBridge connector are kept per these settings (`langbridge_label`), so any of them share a folder.
    # The coefficient activation: "softmax" (the paper's text) or "none" (raw logits, the official code).
    coefficient_activation: str = "softmax"
    # Stage 1's learning rate for the LangBridge runs when it differs from pretrain_lr (None: the same): softmax
    # coefficients learn slowly at pretrain_lr.
    langbridge_pretrain_lr: float | None = 5e-3
    # The weight of stage 1's caption-word loss for the LangBridge runs (training/caption_words.py; 0: off, as the
    # paper's stage 1): each image's coefficients asked to name its caption's words.
    caption_word_loss: float = 1.0
    # The weight of stage 1's coefficient-spread loss (each visual token a mix of few words; training/caption_words.py;
    # 0: off). Tried in the study, it did not hold.
    coefficient_spread_loss: float = 0.0
    # transformers' Hub kernels for every model the demo loads (None: only when the Hub may be reached). How models
    # load, not what the stages compute: never recorded, so it redoes no stage and any cache serves either setting.
    use_kernels: bool | None = None

    def __post_init__(self):
        """The settings a user gives (the seed, the activation, the stage-1 loss weights), checked before any work."""
        check_seed(self.seed)
        if self.coefficient_activation not in ("none", "softmax"):
            raise SettingError("coefficient_activation", self.coefficient_activation, "none or softmax")
        for name in COEFFICIENT_LOSSES:
            check_weight(getattr(self, name), name)
        check_learning_rate(self.langbridge_pretrain_lr, "langbridge_pretrain_lr")
        if self.langbridge_pretrain_lr == self.pretrain_lr:  # the same training: the same stages, names and caches
            self.langbridge_pretrain_lr = None

    @classmethod
    def quick(cls, **changes) -> "DemoSettings":
        """Small settings (minutes): a smoke test of the whole path. `changes`: other fields (seed, activation...)."""
        return cls(
            **{
                "train_scenes": 400,
                "validation_scenes": 30,
                "test_scenes": 60,
                "vision_steps": 100,
                "text_steps": 150,
                "shared_vocab_size": 128,
                "projector_hidden": 64,
                "pretrain_steps": 40,
                "pretrain_checkpoints": 2,
                "sft_steps": 40,
                "llm2_hidden": 64,
                "llm2_layers": 2,
            }
            | changes
        )

    def recorded(self) -> dict:
        """The settings as caches and reports keep them. Settings added after a release are left out at the value
        that stood before them (OMITTED_AT_DEFAULT), so folders made before them stay valid (their stages are not
        redone)."""
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in NOT_RECORDED and (k not in OMITTED_AT_DEFAULT or v != OMITTED_AT_DEFAULT[k])
        }

    def fingerprint(self, *names: str) -> str:
        chosen = {k: v for k, v in self.recorded().items() if not names or k in names}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


# Settings added after a release, left out of the record at the value that stood before them (see
# DemoSettings.recorded): 0, the paper's stage 1, whatever the default is now.
OMITTED_AT_DEFAULT = {"caption_word_loss": 0.0, "coefficient_spread_loss": 0.0}
NOT_RECORDED = ("use_kernels",)

# What each stage's result depends on: a stage is redone when one of these settings changes.
WORLD = ("seed", "image_size", "train_scenes", "validation_scenes", "test_scenes")
VISION = ("seed", "image_size", "patch_size", "vision_hidden", "vision_layers", "vision_steps")
LLMS = (
    "seed",
    "train_scenes",
    "tokenizer_vocab",
    "llm1_hidden",
    "llm1_layers",
    "llm2_hidden",
    "llm2_layers",
    "text_steps",
    "text_lr",
)
VOCABULARY = LLMS + ("shared_vocab_size",)
COMPOSED = VISION + VOCABULARY + ("projector_hidden",)
PRETRAIN = WORLD + COMPOSED + ("pretrain_steps", "pretrain_lr", "pretrain_checkpoints", "batch_size")
SFT = PRETRAIN + ("sft_steps", "sft_lr")
# Added to a stage's dependencies when it trains or reads a LangBridge connector.
LANGBRIDGE = ("coefficient_activation", "langbridge_pretrain_lr", *COEFFICIENT_LOSSES)

# LangBridge's stage 1 with no remedy: the caption loss alone, at stage 1's own rate (the paper's objective).
NO_REMEDY = {"langbridge_pretrain_lr": None, **{name: 0.0 for name in COEFFICIENT_LOSSES}}
# The paper's stage 1 as the report's row "B (paper's stage 1)" runs it: no remedy, with the activation the study found
# best for it (raw logits, the official code's: softmax learns too slowly at stage 1's rate; README, "The study").
# It was the demo's default before the remedy, so a folder made then already holds its stages.
PAPER_STAGE1 = {"coefficient_activation": "none", **NO_REMEDY}
PAPER_ROW = "B (paper's stage 1)"
PAPER_ROW_DESCRIPTION = (
    "LangBridge with the paper's stage 1 (caption loss only, raw-logit coefficients), pretrained with LLM-1, "
    "transferred to LLM-2"
)


def has_remedy(s: DemoSettings) -> bool:
    """Whether LangBridge's stage 1 departs from the paper's objective (a coefficient loss, its own rate)."""
    return any(getattr(s, name) != value for name, value in NO_REMEDY.items())


def langbridge_label(s: DemoSettings) -> str:
    """What tells LangBridge runs apart in stage names and report folders: the activation, and a remedy's rate and
    weights."""
    rate = f"-lr{s.langbridge_pretrain_lr:g}" if s.langbridge_pretrain_lr is not None else ""
    words = f"-words{s.caption_word_loss:g}" if s.caption_word_loss else ""
    spread = f"-spread{s.coefficient_spread_loss:g}" if s.coefficient_spread_loss else ""
    return f"{s.coefficient_activation}{rate}{words}{spread}"


def run_stage(s: DemoSettings, run: str, kind: str, depends_on: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The stage's name and dependencies for one of RUNS: LangBridge runs are kept per `langbridge_label`."""
    if RUNS[run][0] != "langbridge":
        return f"{kind}/{run}", depends_on
    if RUNS[run][2] == "none":  # no stage 1: a stage-1 remedy does not change it
        return f"{kind}/{run}-{s.coefficient_activation}", depends_on + ("coefficient_activation",)
    return f"{kind}/{run}-{langbridge_label(s)}", depends_on + LANGBRIDGE


# The console's column of stage names: as wide as the default run's longest (its captions of the transferred B).
NAME_WIDTH = 53

OUT = "<out>"  # how `.done.json` writes the demo folder in the paths a stage returns


def _paths_under(value, old: str, new: str):
    """`value` (a stage's result: dicts, lists, strings) with the prefix `old` of its path strings made `new`."""
    if isinstance(value, dict):
        return {key: _paths_under(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_paths_under(item, old, new) for item in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old) :]
    return value


def finished_result(out: Path, name: str):
    """The result a finished stage of the demo folder `out` recorded, its paths in `out` as it is now."""
    done = json.loads((Path(out) / name / ".done.json").read_text())
    return _paths_under(done["result"], OUT, str(out))


class Stages:
    """Runs each stage once: a finished stage leaves `.done.json` (its settings, results and the seconds it took) and
    is reused, its time kept as measured. Paths into the demo folder are kept relative to it, so a moved or renamed
    folder resumes from where it is now. Each stage is one console line; what it prints goes to the log."""

    def __init__(self, out: Path, settings: DemoSettings, console: Console):
        self.out, self.settings, self.console = out, settings, console
        self.timings: dict[str, float | None] = {}  # seconds per stage, as measured when it ran (None: not recorded)
        self.cached: list[str] = []

    def with_settings(self, settings: DemoSettings) -> "Stages":
        """The same folder, console and record of times, for stages run with other settings (the paper's stage 1
        beside a remedy): each stage's fingerprint is taken from the settings it ran with."""
        other = Stages(self.out, settings, self.console)
        other.timings, other.cached = self.timings, self.cached
        return other

    def advance(self, steps: int = 1) -> None:
        """Progress of the running stage (its bar on the console)."""
        self.console.advance(steps)

    def run(self, name: str, depends_on: tuple[str, ...], work, steps: int | None = None):
        folder = self.out / name
        marker = folder / ".done.json"
        fingerprint = self.settings.fingerprint(*depends_on)
        if marker.exists():
            done = json.loads(marker.read_text())
            if done["fingerprint"] == fingerprint:
                seconds = self.timings[name] = done.get("seconds")
                self.cached.append(name)
                when = f"{seconds:.0f} s when it ran" if seconds is not None else "time not recorded"
                self.console.say(f"[demo] {name:<{NAME_WIDTH}} cached ({when})")
                return finished_result(self.out, name)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        start = time.time()
        try:
            with self.console.quiet(name, steps):
                result = work(folder)
        except BaseException:
            self.console.say(
                f"[demo] {name:<{NAME_WIDTH}} failed after {time.time() - start:.0f} s (details: {self.console.log_path})"
            )
            raise
        seconds = self.timings[name] = round(time.time() - start, 1)
        kept = _paths_under(_paths_under(result, str(self.out.resolve()), OUT), str(self.out), OUT)
        marker.write_text(json.dumps({"fingerprint": fingerprint, "result": kept, "seconds": seconds}, indent=1))
        self.console.say(f"[demo] {name:<{NAME_WIDTH}} {seconds:5.0f} s")
        return result


def build_world(stages: Stages, s: DemoSettings) -> dict:
    from .world import write_messages_dataset, write_split

    def work(folder):
        splits = {
            "train": write_split(folder, "train", s.seed, s.train_scenes, s.image_size),
            "validation": write_split(folder, "validation", s.seed + 1, s.validation_scenes, s.image_size),
            "test": write_split(folder, "test", s.seed + 2, s.test_scenes, s.image_size),
        }
        write_messages_dataset(
            splits["train"]["conversations"], splits["train"]["images"], folder / "train_conversations_hf"
        )
        return {split: {k: str(v) for k, v in paths.items()} for split, paths in splits.items()}

    return stages.run("world", WORLD, work)


def build_vision(stages: Stages, s: DemoSettings) -> dict:
    from .vision_encoder import train_vision_encoder

    return stages.run(
        "vision",
        VISION,
        lambda folder: train_vision_encoder(
            folder,
            image_size=s.image_size,
            patch_size=s.patch_size,
            hidden_size=s.vision_hidden,
            layers=s.vision_layers,
            steps=s.vision_steps,
            seed=s.seed,
            progress=False,
            on_step=stages.advance,
        ),
        steps=s.vision_steps,
    )


def language_texts(s: DemoSettings, tokenizer) -> list[str]:
    """The world's documents plus dialogues about described scenes in this LLM's own chat format."""
    from modeling_langbridge.assembly.chat_templates import chat_format_for

    from .world import world_dialogues, world_texts

    template = chat_format_for(tokenizer).template
    dialogues = [
        tokenizer.apply_chat_template(d, chat_template=template, tokenize=False)
        for d in world_dialogues(s.seed + 12, s.train_scenes // 2)
    ]
    return world_texts(s.seed + 10, s.train_scenes) + dialogues


def reading_check(folder, s: DemoSettings, count: int = 40) -> dict:
    """Can the LLM read its context, the ability stage 1 relies on? On held-out scenes, greedy: the caption it
    writes after the scene's table, and its answers to questions after the scene's caption and after its table."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .world import caption, questions, scene_table, scenes

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_kernels=hub_kernels_wanted(s.use_kernels)).eval()

    def complete(context: str, tokens: int) -> str:
        inputs = tokenizer(context, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    held_out = [scene for scene, _ in scenes(s.seed + 3, count)]
    copied = sum(complete(scene_table(x) + "\n", 30).split("\n")[0].strip() == caption(x) for x in held_out)
    rng = random.Random(s.seed + 4)
    asked = [(x, q, a) for x in held_out for _, q, a in questions(x, rng)]
    answered = {
        describe.__name__: sum(
            complete(describe(x) + "\n" + q, 3).strip().split(".")[0].strip() == a for x, q, a in asked
        )
        / len(asked)
        for describe in (caption, scene_table)
    }
    return {
        "captions_copied": copied / count,
        "answers_from_caption": answered["caption"],
        "answers_from_table": answered["scene_table"],
    }


def build_llm(stages: Stages, s: DemoSettings, name: str) -> dict:
    from modeling_langbridge.assembly.tiny import (
        byte_level_bpe_tokenizer,
        save_llama_style_llm,
        save_qwen2_style_llm,
        sentencepiece_style_tokenizer,
    )

    from .text_lm import train_causal_lm
    from .world import world_texts

    def work(folder):
        corpus = world_texts(s.seed + 10, s.train_scenes)
        if name == "llm1":
            tokenizer = byte_level_bpe_tokenizer(corpus, vocab_size=s.tokenizer_vocab)
            # Untied input and output embeddings: tiny tied models learn to copy from their context far later.
            save_qwen2_style_llm(
                folder,
                tokenizer,
                hidden_size=s.llm1_hidden,
                num_layers=s.llm1_layers,
                seed=s.seed,
                tie_word_embeddings=False,
            )
        else:
            tokenizer = sentencepiece_style_tokenizer(corpus, vocab_size=s.tokenizer_vocab)
            save_llama_style_llm(folder, tokenizer, hidden_size=s.llm2_hidden, num_layers=s.llm2_layers, seed=s.seed)
        losses = train_causal_lm(
            folder,
            language_texts(s, tokenizer),
            steps=s.text_steps,
            learning_rate=s.text_lr,
            seed=s.seed,
            progress=False,
            on_step=stages.advance,
            use_kernels=s.use_kernels,
        )
        return {
            "path": str(folder),
            "first_loss": losses[0],
            "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            **reading_check(folder, s),
        }

    return stages.run(name, LLMS, work, steps=s.text_steps)


def build_vocabulary(stages: Stages, s: DemoSettings, llm1: dict, llm2: dict) -> dict:
    from transformers import AutoTokenizer

    from modeling_langbridge.assembly.vocab import SharedVocabulary

    from .world import world_texts

    def work(folder):
        tokenizers = [AutoTokenizer.from_pretrained(llm["path"]) for llm in (llm1, llm2)]
        # The world's text uses a few hundred tokens: the vocabulary is those the two tokenizers share, at most T.
        occurring = SharedVocabulary.build(
            tokenizers, world_texts(s.seed + 10, s.train_scenes), None, corpus_name="the world's texts", progress=False
        )
        vocabulary = SharedVocabulary(
            occurring.tokens[: s.shared_vocab_size], occurring.counts[: s.shared_vocab_size], occurring.source
        )
        vocabulary.save(folder / "shared_vocabulary.json")
        coverage = [vocabulary.map_onto(t).coverage for t in tokenizers]
        return {
            "path": str(folder / "shared_vocabulary.json"),
            "size": len(vocabulary),
            "shared_and_seen": len(occurring),
            "coverage": coverage,
            "first_tokens": vocabulary.tokens[:20],
        }

    return stages.run("vocabulary", VOCABULARY, work)


def build_connectors(stages: Stages, s: DemoSettings, vision: Path, llm1: dict, llm2: dict, vocabulary: dict) -> dict:
    """The untrained models: LangBridge on each LLM (same shared vocabulary) and LLaVA on LLM-2."""
    from .llava_baseline import compose_llava

    def llava(folder):
        torch.manual_seed(s.seed)
        shutil.rmtree(folder)
        compose_llava(str(vision), llm2["path"], use_kernels=s.use_kernels).save(folder)
        return {"llava-llm2": str(folder)}

    return stages.run("composed/llava", COMPOSED, llava) | build_langbridge(stages, s, vision, llm1, llm2, vocabulary)


def build_langbridge(stages: Stages, s: DemoSettings, vision: Path, llm1: dict, llm2: dict, vocabulary: dict) -> dict:
    """The untrained LangBridge models, one on each LLM with the same shared vocabulary, kept per activation."""
    from modeling_langbridge.assembly.compose import compose

    def langbridge(folder):
        paths = {}
        for name, llm in (("langbridge-llm1", llm1), ("langbridge-llm2", llm2)):
            torch.manual_seed(s.seed)
            compose(
                str(vision),
                llm["path"],
                projector_hidden_size=s.projector_hidden,
                vocab=vocabulary["path"],
                coefficient_activation=s.coefficient_activation,
                use_kernels=s.use_kernels,
            ).save(folder / name)
            paths[name] = str(folder / name)
        return paths

    return stages.run(
        f"composed/langbridge-{s.coefficient_activation}", COMPOSED + ("coefficient_activation",), langbridge
    )


def train(
    recipe_name: str,
    model_dir: str,
    data: dict,
    out: Path,
    s: DemoSettings,
    on_step=None,
    langbridge_lr=None,
    coefficient_losses: dict | None = None,
) -> dict:
    """One run of a project recipe with the demo's settings; returns its losses. The Trainer prints its log (a loss
    dict per `logging_steps`) instead of a progress bar; `on_step` is called after every step."""
    from transformers import TrainerCallback
    from trl import ModelConfig, SFTConfig

    from .. import pretrain, sft
    from ..arguments import LangBridgeArguments

    stage1 = recipe_name == "pretrain"
    steps = s.pretrain_steps if stage1 else s.sft_steps
    pretrain_lr = s.pretrain_lr if langbridge_lr is None else langbridge_lr
    saving = (
        {"save_strategy": "steps", "save_steps": max(1, steps // s.pretrain_checkpoints), "save_only_model": True}
        if stage1
        else {"save_strategy": "no"}
    )
    script_args = LangBridgeArguments(
        dataset=data["captions" if stage1 else "conversations"],
        image_folder=data["images"],
        **(coefficient_losses or {}),
        use_kernels=s.use_kernels,
    )
    training_args = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        learning_rate=pretrain_lr if stage1 else s.sft_lr,
        per_device_train_batch_size=s.batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        max_length=256,
        seed=s.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        activation_checkpointing=False,
        **saving,
        logging_steps=10 if stage1 else 5,
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    model_args = ModelConfig(model_name_or_path=model_dir, dtype="float32")

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if on_step is not None:
                on_step()

    trainer = (pretrain if stage1 else sft).main(script_args, training_args, model_args, callbacks=[Progress()])
    losses = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    (out / "losses.json").write_text(json.dumps(losses))
    return {"path": str(out), "losses": losses}


def coefficient_losses(s: DemoSettings) -> dict:
    """The weights of stage 1's optional coefficient losses for the LangBridge runs (LLaVA's runs train without)."""
    return {name: getattr(s, name) for name in COEFFICIENT_LOSSES}


def pretrain_run(stages: Stages, s: DemoSettings, run: str, start: str, composed: dict, data: dict) -> dict:
    """Stage 1 of one of RUNS from its composed model; a LangBridge run's with its activation, rate and losses."""
    langbridge = RUNS[run][0] == "langbridge"
    name, depends_on = run_stage(s, run, "pretrain", PRETRAIN)
    return stages.run(
        name,
        depends_on,
        steps=s.pretrain_steps,
        work=lambda out: train(
            "pretrain",
            composed[start],
            data,
            out,
            s,
            stages.advance,
            langbridge_lr=s.langbridge_pretrain_lr if langbridge else None,
            coefficient_losses=coefficient_losses(s) if langbridge else None,
        ),
    )


def transfer_run(stages: Stages, s: DemoSettings, pretrained: dict, llm2: dict) -> dict:
    """B's stage-1 adapter moved onto LLM-2 by `transfer`, with no training there."""
    from modeling_langbridge.assembly.transfer import transfer

    def move_to_llm2(folder):
        moved = transfer(
            Path(pretrained["path"]) / "adapter", llm2["path"], str(stages.out / "vision"), use_kernels=s.use_kernels
        )
        shutil.rmtree(folder)
        moved.save(folder)
        return {"path": str(folder), "coverage": moved.mapping.coverage, "composed": len(moved.mapping.composed)}

    return stages.run(*run_stage(s, "B", "transfer", PRETRAIN), move_to_llm2)


def sft_run(stages: Stages, s: DemoSettings, run: str, start: str, data: dict) -> dict:
    return stages.run(
        *run_stage(s, run, "sft", SFT),
        steps=s.sft_steps,
        work=lambda out: train("sft", start, data, out, s, stages.advance),
    )


def run_experiment(stages: Stages, s: DemoSettings, world: dict, composed: dict, llm2: dict) -> dict:
    data = world["train"]
    pretrained = {
        run: pretrain_run(stages, s, run, start, composed, data)
        for run, start in (("A", "llava-llm2"), ("B", "langbridge-llm1"), ("C", "langbridge-llm2"))
    }
    transferred = transfer_run(stages, s, pretrained["B"], llm2)
    starts = {
        "A": pretrained["A"]["path"],
        "B": transferred["path"],
        "C": pretrained["C"]["path"],
        "D-llava": composed["llava-llm2"],
        "D-langbridge": composed["langbridge-llm2"],
    }
    finetuned = {run: sft_run(stages, s, run, start, data) for run, start in starts.items()}
    return {"pretrained": pretrained, "transferred": transferred, "finetuned": finetuned}


def paper_stage1_run(stages: Stages, s: DemoSettings, world: dict, vision: Path, llms: dict, vocabulary: dict) -> dict:
    """Run B again with the paper's stage 1 (PAPER_STAGE1), for the report's row beside a remedy: its own composed
    model, stage 1 on LLM-1, transfer, SFT, scores and captions before SFT, under the stage names a run of those
    settings has (so a folder that ran them, as the demo's default before the remedy, reuses them)."""
    paper = replace(s, **PAPER_STAGE1)
    stages = stages.with_settings(paper)
    composed = build_langbridge(stages, paper, vision, llms["llm1"], llms["llm2"], vocabulary)
    pretrained = pretrain_run(stages, paper, "B", "langbridge-llm1", composed, world["train"])
    transferred = transfer_run(stages, paper, pretrained, llms["llm2"])
    finetuned = sft_run(stages, paper, "B", transferred["path"], world["train"])
    scored = score(stages, paper, world, {"B": finetuned})["B"]
    models = {"B on LLM-1": ("B", "pretrain", pretrained), "B on LLM-2 (transferred)": ("B", "transfer", transferred)}
    return {
        "description": PAPER_ROW_DESCRIPTION,
        "settings": PAPER_STAGE1,
        "scores": scored,
        "path": finetuned["path"],
        "captions_before_sft": caption_before_sft(stages, paper, world, models),
        "losses": {"pretrain": pretrained["losses"], "sft": finetuned["losses"]},
    }


def score(stages: Stages, s: DemoSettings, world: dict, finetuned: dict) -> dict:
    """Each SFT'd run's answers to the validation and test questions, by greedy generation."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_langbridge.analysis.evaluation import evaluate, read_questions

    def scored(run):
        def work(folder):
            model = AutoModelForImageTextToText.from_pretrained(
                finetuned[run]["path"], use_kernels=hub_kernels_wanted(s.use_kernels)
            )
            processor = AutoProcessor.from_pretrained(finetuned[run]["path"])
            results = {}
            for split in ("validation", "test"):
                evaluation = evaluate(
                    model,
                    processor,
                    read_questions(world[split]["questions"]),
                    world[split]["images"],
                    batch_size=64,
                    max_new_tokens=4,
                    progress=False,
                )
                results[split] = evaluation.to_dict()
                evaluation.save(folder / split)
                stages.advance()
            return results

        return work

    return {run: stages.run(*run_stage(s, run, "scores", SFT), scored(run), steps=2) for run in finetuned}


def caption_before_sft(stages: Stages, s: DemoSettings, world: dict, models: dict) -> dict:
    """Transfer itself, before any SFT: how well each stage-1 model captions unseen images in stage 1's own format
    (the image, then the caption). `models`: label -> (run, stage kind, that stage's result)."""
    from .stage1_captions import caption_accuracy

    def captioned(path):
        def work(folder):
            accuracies = {}
            for split in ("validation", "test"):
                accuracies[split] = caption_accuracy(
                    path,
                    world[split]["captions"],
                    world[split]["images"],
                    predictions=folder / f"{split}.jsonl",
                    use_kernels=s.use_kernels,
                )
                stages.advance()
            return accuracies

        return work

    return {
        label: stages.run(
            *run_stage(s, run, f"captions-before-sft/{kind}", PRETRAIN), captioned(result["path"]), steps=2
        )
        for label, (run, kind, result) in models.items()
    }


def stage1_models(experiment: dict) -> dict:
    """The stage-1 models whose captions are read: B's adapter on LLM-1, where it was trained, and on LLM-2 right
    after `transfer`; C (LangBridge trained on LLM-2) and A (LLaVA's connector on LLM-2) are the references."""
    return {
        "A on LLM-2": ("A", "pretrain", experiment["pretrained"]["A"]),
        "B on LLM-1": ("B", "pretrain", experiment["pretrained"]["B"]),
        "B on LLM-2 (transferred)": ("B", "transfer", experiment["transferred"]),
        "C on LLM-2": ("C", "pretrain", experiment["pretrained"]["C"]),
    }


def alignment(stages: Stages, s: DemoSettings, world: dict, composed: dict, experiment: dict, images: int = 16) -> dict:
    """The paper's Figure 1 measures along stage 1, for LLaVA's connector (A) and LangBridge's (C) on LLM-2."""
    from PIL import Image

    from modeling_langbridge.analysis.alignment import (
        alignment_curve,
        expand_checkpoints,
        plot_alignment,
        read_captions,
    )

    def work(folder):
        test = world["test"]
        captions = read_captions(test["captions"])
        names = sorted(captions)[:images]
        pictures = [Image.open(Path(test["images"]) / name).convert("RGB") for name in names]
        series = {}
        for run, start, label in (("A", "llava-llm2", "A: LLaVA MLP"), ("C", "langbridge-llm2", "C: LangBridge")):
            checkpoints = [Path(composed[start]), *expand_checkpoints([experiment["pretrained"][run]["path"]])[:-1]]
            points = alignment_curve(
                checkpoints, pictures, [captions[n] for n in names], progress=False, use_kernels=s.use_kernels
            )
            points[0].step = 0  # the untrained, composed model
            series[label] = points
            stages.advance()
        plot_alignment(series, folder / "alignment.png", title="Stage 1 on LLM-2: visual tokens vs. word embeddings")
        return {label: [asdict(p) for p in points] for label, points in series.items()} | {
            "plot": str(folder / "alignment.png"),
            "chance": chance_top1_cosine(composed["langbridge-llm2"], use_kernels=s.use_kernels),
        }

    return stages.run(f"alignment/{langbridge_label(s)}", PRETRAIN + LANGBRIDGE, work, steps=2)


def chance_top1_cosine(model_dir: str, samples: int = 4096, use_kernels: bool | None = None) -> float:
    """The mean top-1 cosine of random directions to the LLM's words (the alignment measure's chance level): in a
    narrow embedding space a random vector already has a fairly close word."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_langbridge.analysis.alignment import NearestWords, nearest_tokens

    model = AutoModelForImageTextToText.from_pretrained(model_dir, use_kernels=hub_kernels_wanted(use_kernels))
    words = NearestWords(model, AutoProcessor.from_pretrained(model_dir).tokenizer)
    directions = torch.randn(samples, words.embeddings.shape[1], generator=torch.Generator().manual_seed(0))
    return nearest_tokens(directions, words.embeddings, top_k=1)[0].mean().item()


def main(
    out: str | Path = "langbridge-demo",
    quick: bool = False,
    seed: int = 0,
    coefficient_activation: str | None = None,
    report_dir: str | Path | None = None,
    overrides: dict | None = None,
    use_kernels: bool | None = None,
) -> Path:
    """Run (or reuse) every stage in `out`, then write results.json and report.md to `report_dir` (default: `out`).
    The console gets a line per stage; the rest goes to `demo.log` in `out`. `coefficient_activation` (default:
    DemoSettings') and `overrides` change DemoSettings fields (for experiments such as the study's remedies, or
    PAPER_STAGE1; the stages that depend on them are redone). When LangBridge's stage 1 has a remedy, B also runs
    with the paper's stage 1, the report's row beside it. `use_kernels`: transformers' Hub kernels for every model
    loaded (default: only when the Hub may be reached)."""
    from .report import rows, write_report

    out = Path(out)
    report_dir = Path(report_dir) if report_dir else out
    activation = {"coefficient_activation": coefficient_activation} if coefficient_activation else {}
    settings = (DemoSettings.quick if quick else DemoSettings)(seed=seed, **activation)
    settings = replace(settings, **(overrides or {}), use_kernels=use_kernels)
    out.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    console = Console(out / "demo.log")
    console.say(
        f"[demo] writing to {out}/ (open {report_dir / 'report.md'} when done; training details go to "
        f"{console.log_path})"
    )
    previous = out / "settings.json"
    if previous.exists() and json.loads(previous.read_text()) != settings.recorded():
        console.say(f"[demo] {out} holds a run with other settings: its stages are redone where they differ")
    previous.write_text(json.dumps(settings.recorded(), indent=1))
    start = time.time()
    stages = Stages(out, settings, console)
    try:
        world = build_world(stages, settings)
        vision = build_vision(stages, settings)
        llm1, llm2 = build_llm(stages, settings, "llm1"), build_llm(stages, settings, "llm2")
        vocabulary = build_vocabulary(stages, settings, llm1, llm2)
        composed = build_connectors(stages, settings, out / "vision", llm1, llm2, vocabulary)
        experiment = run_experiment(stages, settings, world, composed, llm2)
        before_sft = caption_before_sft(stages, settings, world, stage1_models(experiment))
        scores = score(stages, settings, world, experiment["finetuned"])
        aligned = alignment(stages, settings, world, composed, experiment)
        paper = (
            paper_stage1_run(stages, settings, world, out / "vision", {"llm1": llm1, "llm2": llm2}, vocabulary)
            if has_remedy(settings)
            else None
        )

        measured = [t for t in stages.timings.values() if t is not None]
        results = {
            "settings": settings.recorded(),
            "seed": seed,
            "quick": quick,
            "coefficient_activation": settings.coefficient_activation,
            "langbridge_label": langbridge_label(settings),
            "vision": vision,
            "llms": {"llm1": llm1, "llm2": llm2},
            "vocabulary": vocabulary,
            "transfer": experiment["transferred"],
            "runs": {
                name: {
                    "description": RUNS[name][3],
                    "stage1": RUNS[name][2],
                    "scores": scores[name],
                    "path": experiment["finetuned"][name]["path"],
                }
                for name in RUNS
            },
            "captions_before_sft": before_sft,
            # B with the paper's stage 1, beside a remedy's (None when B's stage 1 is the paper's).
            "paper_stage1": paper,
            "losses": {
                "pretrain": {k: v["losses"] for k, v in experiment["pretrained"].items()},
                "sft": {k: v["losses"] for k, v in experiment["finetuned"].items()},
            },
            "alignment": aligned,
            # The stages' times as measured when each ran (a cached stage keeps its own), and this run's wall time.
            "seconds": round(sum(measured), 1),
            "stage_seconds": stages.timings,
            "cached_stages": stages.cached,
            "run_seconds": round(time.time() - start, 1),
        }
        (report_dir / "results.json").write_text(json.dumps(results, indent=1))
        report_start = time.time()
        with console.quiet("report"):
            write_report(report_dir, results, experiment, world, use_kernels=use_kernels)
        console.say(f"[demo] {'report':<{NAME_WIDTH}} {time.time() - report_start:5.0f} s")
    finally:
        console.close()

    overall = {name: 100 * run["scores"]["test"]["overall"]["vqa_accuracy"] for name, run in rows(results)}
    console.say(
        "[demo] test accuracy, overall (% of A): "
        + ", ".join(
            f"{name} {accuracy:.1f}"
            + (f" ({100 * accuracy / overall['A']:.0f}%)" if name != "A" and overall["A"] else "")
            for name, accuracy in overall.items()
        )
    )
    console.say(
        f"[demo] done in {time.time() - start:.0f} s"
        + (f" ({len(stages.cached)} stages reused)" if stages.cached else "")
        + f". Open {report_dir / 'report.md'} first."
    )
    return report_dir
