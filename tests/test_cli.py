import argparse
from pathlib import Path

from modeling_langbridge.cli import build_parser, main


def test_quickstart_composes_a_folder_and_answers_an_image_prompt(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Q: What colour is the square?" in printed and "\nA: '" in printed
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert (tmp_path / "model" / "modeling_langbridge.py").exists()


def test_quickstart_without_out_removes_its_temporary_folder(capsys):
    assert main(["quickstart"]) == 0
    printed = capsys.readouterr().out
    folder = Path(printed.split("Removed the temporary folder ")[1].split(" ")[0])
    assert folder.name.startswith("langbridge-quickstart-") and not folder.exists()


def all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from all_parsers(child)


def test_every_option_has_help_and_its_default_shows():
    for parser in all_parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{parser.prog} {action.dest} has no help"
            if action.option_strings and action.default not in (None, False) and not isinstance(action.default, bool):
                assert "default" in formatter._get_help_string(action), f"{parser.prog} {action.dest}"
    assert "(default: 0)" in " ".join(
        build_parser()._subparsers._group_actions[0].choices["demo"].format_help().split()
    )


def test_compose_flags_state_the_defaults_of_compose_itself():
    """One owner per setting: the flags carry the config's names, and the defaults they state are compose()'s own."""
    import inspect

    from modeling_langbridge.assembly.compose import compose

    defaults = {n: p.default for n, p in inspect.signature(compose).parameters.items() if p.default is not p.empty}
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    stated = {}
    for action in commands.choices["compose"]._actions:
        if action.dest in defaults:
            given = action.default is not None  # a flag with an argparse default passes it on; the others state it
            stated[action.dest] = (
                action.default if given else (action.help or "").rsplit("(default: ", 1)[-1].rstrip(")")
            )
    assert {
        "shared_vocab_size",
        "coefficient_activation",
        "projector_hidden_size",
        "projector_hidden_act",
        "vision_feature_layer",
        "min_coverage",
        "dtype",
    } <= set(stated)
    for name, value in stated.items():
        stated_by_words = (
            "vocab",
            "vision_feature_select_strategy",
            "image_grid_pinpoints",
            "use_kernels",
        )  # "from the tower", ...
        assert str(value) == str(defaults[name]) or name in stated_by_words, name


def test_demo_flags_set_the_settings_a_single_run_uses():
    """Without flags, the study's remedy (DemoSettings' defaults); --paper-stage-1 the paper's stage 1; a weight of
    0 is a setting, not a flag left out."""
    from dataclasses import replace

    from langbridge_training.demo.experiment import PAPER_STAGE1, DemoSettings, has_remedy, langbridge_label
    from modeling_langbridge.cli.train import demo_settings

    def settings(*flags):
        return replace(DemoSettings(), **demo_settings(build_parser().parse_args(["demo", *flags])))

    default = settings()
    assert default == DemoSettings() and has_remedy(default) and default.coefficient_activation == "softmax"
    assert (default.caption_word_loss, default.langbridge_pretrain_lr) == (1.0, 5e-3)
    paper = settings("--paper-stage-1", "--seed", "4")
    assert paper == replace(DemoSettings(seed=4), **PAPER_STAGE1) and not has_remedy(paper)
    assert paper.coefficient_activation == "none"
    assert settings("--paper-stage-1", "--coefficients", "softmax").coefficient_activation == "softmax"
    # Round two's remedy from flags alone: stage 1's own rate given is no rate of its own, so the study's stages serve.
    words = settings("--coefficients", "none", "--caption-word-loss", "0.1", "--langbridge-pretrain-lr", "1e-3")
    assert langbridge_label(words) == "none-words0.1" and words.langbridge_pretrain_lr is None
    off = settings("--caption-word-loss", "0")
    assert (
        off.caption_word_loss == 0.0 and off.langbridge_pretrain_lr == 5e-3 and off.coefficient_activation == "softmax"
    )
