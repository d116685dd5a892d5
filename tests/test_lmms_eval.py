"""The lmms-eval plugin through lmms-eval's own code: its registry, its task files, its request building and its
evaluator, on local tasks over a tiny composed folder (tests/lmms_eval_stage.py builds them).

lmms-eval is not in the main environment: this module skips there. CI's lmms-eval stage (`.ci/lmms-eval`) installs
it in a venv of its own (README, "Evaluate") and runs this module there.
"""

import pytest

pytest.importorskip(
    "lmms_eval",
    reason="lmms-eval is not installed here; CI's lmms-eval stage (.ci/lmms-eval) runs this module in its own venv",
)

from lmms_eval.api.instance import Instance, unwrap_generation_output  # noqa: E402
from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402
from lmms_eval.tasks import TaskManager, get_task_dict  # noqa: E402
from lmms_eval_stage import (  # noqa: E402
    CHOICE_TASK,
    GENERATION_TASKS,
    MUTUAL_INFO_TASK,
    choice_losses,
    prepare,
)

from modeling_langbridge.analysis.harness import HarnessRunner  # noqa: E402
from modeling_langbridge.assembly.tiny import random_shapes_image  # noqa: E402


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """The tiny model and the local tasks, with lmms-eval's datasets cache in a temporary folder."""
    out = tmp_path_factory.mktemp("lmms_eval_stage")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMMS_EVAL_DATASETS_CACHE", str(out / "datasets-cache"))
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        expected = prepare(out, mutual_info=True)
        yield {
            "out": out,
            "expected": expected,
            "tasks": TaskManager(include_path=str(out / "tasks"), include_defaults=False),
        }


@pytest.fixture(scope="module")
def plugin(stage):
    LangBridge = get_model("langbridge")  # resolved by lmms-eval's own registry, as `--model langbridge` is
    return LangBridge(pretrained=str(stage["out"] / "model"), device="cpu", dtype="float32", batch_size=8)


def evaluate_tasks(plugin, stage, tasks):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMMS_EVAL_DATASETS_CACHE", str(stage["out"] / "datasets-cache"))
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        return simple_evaluate(model=plugin, tasks=tasks, task_manager=stage["tasks"], log_samples=True)


def test_the_plugin_resolves_through_lmms_eval_and_its_entry_point():
    LangBridge = get_model("langbridge")
    assert LangBridge.__module__ == "modeling_langbridge.analysis.harness.models.langbridge"


def test_multiple_choice_picks_the_likeliest_choice(plugin, stage):
    """Each item's gold is the choice with the lowest loss under the model's own forward pass (computed without
    the plugin): lmms-eval's `multiple_choice` takes the argmin of what `loglikelihood` returns, so a plugin that
    returns losses scores 1.0. One that returns log-probabilities picks the least likely choice and scores 0 (and
    lmms-eval 0.7.3 cannot even score unwrapped pairs: `ValueError: too many values to unpack`)."""
    expected = stage["expected"]
    assert expected["smallest_margin"] > 1e-3  # the gold is the likeliest by a margin, not by rounding
    results = evaluate_tasks(plugin, stage, [CHOICE_TASK])
    assert results["results"][CHOICE_TASK]["acc,none"] == 1.0
    samples = sorted(results["samples"][CHOICE_TASK], key=lambda s: s["doc_id"])
    seen = [[float(loss) for loss, _ in s["filtered_resps"]] for s in samples]
    for row, want in zip(seen, expected["choice_losses"], strict=True):
        assert row == pytest.approx(want, abs=1e-4)
    # The least likely choice is never the pick: the direction, not only the wrapping, is what lmms-eval expects.
    assert all(min(row) == row[gold] for row, gold in zip(seen, expected["choice_gold"]))


def test_loglikelihood_answers_every_request_form_lmms_eval_builds(plugin, stage):
    """lmms-eval's own `construct_requests` for a `multiple_choice` task with `acc_mutual_info`: a request per
    choice `(context, " choice", doc_to_visual, doc_id, task, split)`, and per choice the unconditional
    `(context="", continuation=choice)`. Each is answered with the model's own loss, wrapped so that lmms-eval
    0.7's `unwrap_generation_output` hands the pair to the task unchanged.

    lmms-eval 0.7.3's evaluator cannot run `acc_mutual_info` itself: its `build_all_requests` reads
    `arguments[2]` of every request and fails on the two-element ones (README, "Evaluate")."""
    task = get_task_dict([MUTUAL_INFO_TASK], stage["tasks"])[MUTUAL_INFO_TASK]
    with pytest.raises(IndexError):
        task.build_all_requests(limit=1)
    requests = []
    for doc_id in (0, 1):
        doc = task.dataset["test"][doc_id]
        metadata = {"task": MUTUAL_INFO_TASK, "doc_id": doc_id, "repeats": 1, "split": "test"}
        requests += task.construct_requests(doc_id=doc_id, ctx=task.doc_to_text(doc), metadata=metadata)
    assert sorted({len(r.args) for r in requests}) == [2, 6] and len(requests) == 2 * 4 * 2
    plugin.task_dict = {MUTUAL_INFO_TASK: task.dataset}
    answered = [unwrap_generation_output(x)[0] for x in plugin.loglikelihood(requests)]
    expected = stage["expected"]
    for request, (loss, greedy) in zip(requests, answered, strict=True):
        assert isinstance(loss, float) and isinstance(greedy, bool)
        if len(request.args) == 2:
            context, choice = request.args
            assert context == "" and loss == pytest.approx(expected["unconditional_losses"][choice], abs=1e-4)
        else:
            want = expected["choice_losses"][request.doc_id][request.idx]
            assert loss == pytest.approx(want, abs=1e-4)


def test_the_loglikelihood_output_type_scores_the_target_of_each_document(plugin, stage):
    """`output_type: loglikelihood` sends the task's `doc_to_target` function rather than a string."""
    task = get_task_dict([CHOICE_TASK], stage["tasks"])[CHOICE_TASK]
    doc = task.dataset["test"][0]
    plugin.task_dict = {CHOICE_TASK: task.dataset}
    target = lambda d: d["choices"][d["answer"]]  # noqa: E731
    request = Instance(
        request_type="loglikelihood",
        arguments=(doc["question"], target, task.doc_to_visual, 0, CHOICE_TASK, "test"),
        idx=0,
        metadata={"task": CHOICE_TASK, "doc_id": 0, "repeats": 1},
    )
    (loss, greedy), _ = unwrap_generation_output(plugin.loglikelihood([request])[0])
    image = task.doc_to_visual(doc)[0]
    own = choice_losses(plugin.runner.model, plugin.runner.processor, image, doc["question"], [target(doc)], "")
    assert loss == pytest.approx(own[0], abs=1e-4) and isinstance(greedy, bool)


def test_generation_tasks_score_as_langbridge_eval(plugin, stage):
    """The same items from parquet and from a save_to_disk folder: lmms-eval's exact match and answers are the
    project's own `evaluate`'s (which built the gold: half its own answers, so the score is 0.5)."""
    expected = stage["expected"]
    results = evaluate_tasks(plugin, stage, GENERATION_TASKS)
    for task in GENERATION_TASKS:
        assert results["results"][task]["exact_match,none"] == expected["generation_exact_match"] == 0.5
        samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
        answers = [s["filtered_resps"] for s in samples]
        assert [a[0] if isinstance(a, list) else a for a in answers] == expected["predictions"]


def test_generation_batches_only_requests_with_the_same_settings(plugin, stage):
    """Requests of several tasks arrive in one list; each keeps its own `max_new_tokens` and `until`."""
    docs = {0: {"image": random_shapes_image(0)}, 1: {"image": random_shapes_image(1)}}
    plugin.task_dict = {"shapes": {"test": docs}}
    visual = lambda doc: [doc["image"]]  # noqa: E731
    settings = [{"max_new_tokens": 1, "until": []}, {"max_new_tokens": 4, "until": ["\n"]}]
    requests = [
        Instance(
            request_type="generate_until",
            arguments=("What colour is the square?", dict(settings[i]), visual, i, "shapes", "test"),
            idx=0,
            metadata={"task": "shapes", "doc_id": i, "repeats": 1},
        )
        for i in docs
    ]
    replies = plugin.generate_until(requests)
    runner: HarnessRunner = plugin.runner
    for i, reply in enumerate(replies):
        alone = runner.generate(
            ["What colour is the square?"],
            [[docs[i]["image"]]],
            {"max_new_tokens": settings[i]["max_new_tokens"]},
            settings[i]["until"],
        )
        assert reply == alone[0]
    assert replies[0] != replies[1]  # one token against four: the settings were not shared


def test_a_visual_that_is_not_an_image_is_refused_by_name(plugin):
    """A task whose doc_to_visual gives file paths (lmms-eval's own models read a str as a video) is told what to
    give instead, before anything runs."""
    plugin.task_dict = {"paths": {"test": {0: {"image": "images/0.png"}}}}
    request = Instance(
        request_type="generate_until",
        arguments=("What colour?", {"max_new_tokens": 1}, lambda doc: [doc["image"]], 0, "paths", "test"),
        idx=0,
        metadata={"task": "paths", "doc_id": 0, "repeats": 1},
    )
    with pytest.raises(TypeError, match="task 'paths': doc_to_visual gave a str; the langbridge model takes PIL"):
        plugin.generate_until([request])
