"""Evaluation: methods, measured tokens, scoring, calibration, the JSON report, figures, eval.py and the model card."""

import argparse
import copy
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.nn import functional as F

import eval as eval_script
from modeling_arrcoc import evaluation as E
from modeling_arrcoc.cli import whole_number
from modeling_arrcoc.explanation import prompt_batch
from modeling_arrcoc.evaluation.model_card import write_model_card
from modeling_arrcoc.evaluation.report import headline, more_tokens, more_tokens_line, own_budgets

BUDGETS = [4, 16, 100]  # the tiny preset's tiers on its 8x8 grid: tier 100 keeps all 64 patches
NUM_SAMPLES = 6
ALL_METHODS = ["auto", "tier_4", "tier_16", "tier_100", "full"] + [
    f"{b}@{k}" for b in ("uniform_pool", "saliency_topk", "random", "compressor", "query_sim") for k in BUDGETS
]
# What runs through a learned checkpoint: the learned compressor needs its own (skipped, with the reason).
RUN_METHODS = [name for name in ALL_METHODS if not name.startswith("compressor@")]


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-checkpoint")
    model, processor = tiny
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic-cache"))


@pytest.fixture(scope="module")
def rows(cache_dir):
    data = E.load_eval_dataset("synthetic", num_samples=NUM_SAMPLES, image_size=64, patch_size=8, cache_dir=cache_dir)
    return [data.dataset[i] for i in range(NUM_SAMPLES)]


@pytest.fixture(scope="module")
def cli_run(checkpoint, cache_dir, tmp_path_factory):
    """eval.py's main, end to end on the saved tiny checkpoint, once for the module."""
    out = tmp_path_factory.mktemp("eval-out")
    argv = [str(checkpoint), "--dataset", "synthetic", "--num-samples", str(NUM_SAMPLES), "--batch-size", "4",
            "--max-new-tokens", "3", "--output-dir", str(out), "--cache-dir", cache_dir, "--quiet",
            "--model-card", str(out / "model_card.md"), "--training-config", "configs/phase1.yaml"]
    return eval_script.main(argv), out


def batch_of(processor, rows):
    return prompt_batch(processor, [r["image"] for r in rows], [r["question"] for r in rows])


# ----------------------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------------------


def test_method_names_cover_every_tier_and_baseline():
    assert E.method_names(BUDGETS) == ALL_METHODS
    assert E.method_names(BUDGETS, "auto", ("query_sim",)) == ["auto"] + [f"query_sim@{k}" for k in BUDGETS]
    assert E.method_names(BUDGETS, 1, ("random",)) == ["tier_16", "random@16"], "an index is a tier index"
    assert E.method_names(BUDGETS, 100, ()) == ["tier_100"], "a value in budgets is a tier value"
    assert E.method_names(BUDGETS, "full") == ["full"]
    with pytest.raises(ValueError, match="Unknown baselines"):
        E.method_names(BUDGETS, "all", ("fastv",))


def test_parse_method_swaps_the_selection():
    assert E.parse_method("uniform_pool@16", BUDGETS) == E.Method("uniform_pool@16", 16, "uniform", "uniform_pool")
    assert E.parse_method("saliency_topk@4", BUDGETS).selection == "hotspot"
    assert E.parse_method("tier_100", BUDGETS) == E.Method("tier_100", 100, "learned", "tier")
    for bad in ("tier_5", "random@", "pool@4", "tier_x"):
        with pytest.raises(ValueError):
            E.parse_method(bad, BUDGETS)


def test_uniform_pooling_is_skipped_where_the_grid_cannot_make_k_cells(tiny):
    config = tiny[0].config  # 8x8 grid
    assert E.unsupported_reason(E.Method("uniform_pool@11", 11, "uniform", "uniform_pool"), config) is not None
    assert E.unsupported_reason(E.Method("uniform_pool@16", 16, "uniform", "uniform_pool"), config) is None
    assert E.unsupported_reason(E.Method("random@11", 11, "random", "random"), config) is None


# ----------------------------------------------------------------------------------------------------------
# Scoring, aggregation and calibration from hand-set runs
# ----------------------------------------------------------------------------------------------------------


def hand_run(name, budgets, predictions, counts, tiers, seconds=1.0):
    return E.MethodRun(E.parse_method(name, budgets), list(predictions), list(counts), list(tiers), seconds)


def test_summaries_aggregate_scores_tokens_and_latency(tiny):
    config = tiny[0].config
    references = [["7"], ["12"], ["A"], ["3"]]
    tasks = ["local_color", "region_row", "chart", "chart"]
    run = hand_run("auto", BUDGETS, ["7", "13", " a ", "3"], [4, 16, 16, 64], [0, 1, 1, 2], seconds=2.0)
    report = E.build_report({"auto": run}, references, tasks, "exact_match", config)
    auto = report["methods"]["auto"]
    assert auto["accuracy"] == 0.75
    assert auto["per_task"] == {"chart": 1.0, "local_color": 1.0, "region_row": 0.0}
    assert auto["per_task_visual_tokens"] == {"chart": 40.0, "local_color": 4.0, "region_row": 16.0}
    assert auto["mean_visual_tokens"] == 25.0 and auto["p50_visual_tokens"] == 16.0
    assert auto["p95_visual_tokens"] == pytest.approx(np.percentile([4, 16, 16, 64], 95))
    assert auto["token_histogram"] == {"4": 1, "16": 2, "64": 1}
    assert auto["tier_histogram"] == {"4": 1, "16": 2, "100": 1}
    assert auto["compression_ratio"] == 64 / 25.0
    assert auto["latency_ms_per_query"] == 500.0
    assert report["calibration"] is None, "no forced tiers were run"
    assert report["per_tier"]["16"] == {"tier": 1, "n_predicted": 2, "accuracy": 0.5, "mean_visual_tokens": 16.0,
                                        "n_oracle": None, "forced_accuracy": None}


def test_hub_metrics_score_with_their_own_rules(tiny):
    config = tiny[0].config
    run = hand_run("full", BUDGETS, ["invoice 12", "10%"], [64, 64], [2, 2])
    anls = E.build_report({"full": run}, [["invoice 13"], ["10"]], ["docvqa"] * 2, "anls", config)
    # "invoice 12" vs "invoice 13": one edit in 10; "10%" vs "10": one edit in 3.
    assert anls["methods"]["full"]["accuracy"] == pytest.approx(((1 - 1 / 10) + (1 - 1 / 3)) / 2)
    relaxed = E.build_report({"full": run}, [["x"], ["10.4"]], ["chartqa"] * 2, "relaxed_accuracy", config)
    assert relaxed["methods"]["full"]["accuracy"] == 0.5


def test_oracle_tier_is_the_smallest_correct_one():
    correct_by_tier = [[True, False, False, False], [True, False, False, True], [False, True, False, True]]
    assert E.oracle_tiers(correct_by_tier) == [0, 2, None, 1]


def test_calibration_from_hand_set_oracle_tiers(tiny):
    config = tiny[0].config
    references = [["1"], ["2"], ["3"], ["4"], ["5"]]
    # Which forced tier answers which sample: oracles are [0, 2, None, 1, 0].
    forced = {
        "tier_4": ["1", "x", "x", "x", "5"],
        "tier_16": ["1", "x", "x", "4", "5"],
        "tier_100": ["x", "2", "x", "4", "5"],
    }
    runs = {name: hand_run(name, BUDGETS, preds, [min(int(name[5:]), 64)] * 5, [i] * 5)
            for i, (name, preds) in enumerate(forced.items())}
    # auto vs oracle: exact on sample 0, under on 1 (1 < 2), no oracle on 2, over on 3 (2 > 1), over by two on 4.
    runs["auto"] = hand_run("auto", BUDGETS, ["1", "x", "x", "4", "5"], [4, 16, 64, 64, 64], [0, 1, 2, 2, 2])
    report = E.build_report(runs, references, ["t"] * 5, "exact_match", config)
    assert report["calibration"] == {"n": 5, "n_no_oracle": 1, "exact": 0.25, "within_one": 0.75, "over": 0.5,
                                     "under": 0.25}
    assert [report["per_tier"][k]["n_oracle"] for k in ("4", "16", "100")] == [2, 1, 1]
    assert [report["per_tier"][k]["n_predicted"] for k in ("4", "16", "100")] == [1, 1, 3]
    assert report["per_tier"]["4"]["forced_accuracy"] == 0.4


# ----------------------------------------------------------------------------------------------------------
# Running methods through the tiny model
# ----------------------------------------------------------------------------------------------------------


def mixed_tiers(model):
    """A per-sample (batch-independent) tier that differs across samples, as a trained allocator's does."""
    n = len(model.config.budgets)
    return model.model.allocator.budget_predictor.register_forward_hook(
        lambda module, args, output: output + 100.0 * F.one_hot((args[2].sum(-1) + 1) % n, n)
    )


def test_auto_matches_model_generate_with_mixed_tiers(tiny, rows):
    model, processor = tiny
    hook = mixed_tiers(model)
    try:
        runs = E.run_methods(model, processor, rows, [E.parse_method("auto", BUDGETS)], batch_size=NUM_SAMPLES,
                             max_new_tokens=3, progress=False)
        batch = batch_of(processor, rows)
        with torch.no_grad():
            outputs = model(**batch, budget="auto")
            generated = model.generate(**batch, budget="auto", max_new_tokens=3, do_sample=False,
                                       pad_token_id=processor.tokenizer.pad_token_id,
                                       eos_token_id=processor.tokenizer.eos_token_id)
    finally:
        hook.remove()
    auto = runs["auto"]
    assert len(set(auto.budget_tiers)) > 1, "the hook should give several tiers in one batch"
    assert auto.budget_tiers == outputs.budget_tiers.tolist()
    assert auto.visual_token_counts == outputs.visual_token_counts.tolist()
    answers = processor.tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert auto.predictions == [a.strip() for a in answers]


def test_the_price_sweep_read_from_the_forced_tiers_is_what_generating_it_gives(tiny, rows, tmp_path):
    model, processor = tiny
    names = ["auto", "auto(cost=0.5)", "auto(cost=60)", "auto(cost=-1)", "tier_4", "tier_16", "tier_100"]
    methods = [E.parse_method(name, BUDGETS) for name in names]
    hook = mixed_tiers(model)
    try:
        read = E.run_methods(model, processor, rows, methods, batch_size=4, max_new_tokens=3, progress=False)
        generated = E.run_methods(model, processor, rows, methods, batch_size=4, max_new_tokens=3, progress=False,
                                  measure_prices=True)
        report = E.evaluate(model, processor, rows, methods=names, batch_size=4, max_new_tokens=3, progress=False)
    finally:
        hook.remove()
    assert len({tuple(read[name].budget_tiers) for name in names[:4]}) > 1, "the prices should move some tiers"
    for name in names:
        assert (read[name].predictions, read[name].visual_token_counts, read[name].budget_tiers) == (
            generated[name].predictions, generated[name].visual_token_counts, generated[name].budget_tiers), name
    assert [read[name].seconds is None for name in names] == [False, True, True, True, False, False, False]
    assert all(generated[name].seconds > 0 for name in names)
    assert read["auto"].tier_check == generated["auto"].tier_check == [NUM_SAMPLES, NUM_SAMPLES]
    priced, auto = report["methods"]["auto(cost=0.5)"], report["methods"]["auto"]
    assert priced["latency_ms_per_query"] is None and priced["answers_from_tiers"]
    assert auto["answers_match_tiers"] == {"same": NUM_SAMPLES, "n": NUM_SAMPLES} and auto["latency_ms_per_query"] > 0
    assert E.format_table(report).splitlines()[3].split()[-1] == "tiers"
    card = write_model_card(report, tmp_path / "card.md").read_text()
    assert f"and {NUM_SAMPLES} of its {NUM_SAMPLES} answers equal that reading" in card
    assert "| auto(cost=0.5) |" in card and card.split("| auto(cost=0.5) |")[1].split("\n")[0].endswith("| n/a |")


@pytest.mark.parametrize("name, selection, budget", [("uniform_pool@16", "uniform", 16), ("tier_100", "learned", 100),
                                                     ("saliency_topk@4", "hotspot", 4), ("full", "learned", "full")])
def test_token_counts_are_the_models_visual_token_counts(tiny, rows, name, selection, budget):
    model, processor = tiny
    runs = E.run_methods(model, processor, rows[:3], [E.parse_method(name, BUDGETS)], batch_size=3, max_new_tokens=1,
                         progress=False)
    with torch.no_grad():
        outputs = model(**batch_of(processor, rows[:3]), budget=budget, selection=selection)
    assert runs[name].visual_token_counts == outputs.visual_token_counts.tolist()
    assert runs[name].budget_tiers == outputs.budget_tiers.tolist()


def test_random_baseline_is_seeded(tiny, rows):
    model, processor = tiny
    method = E.parse_method("random@4", BUDGETS)
    batch, _ = E.eval_batch(model, processor, rows[:3])
    with torch.no_grad():
        first, again, other = (model.get_image_features(plan=E.method_plan(model, batch, method, torch.Generator()
                                                                           .manual_seed(s))).pooler_output
                               for s in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other), "another seed draws other patches"
    runs = [E.run_methods(model, processor, rows[:3], [method], batch_size=3, max_new_tokens=2, seed=0,
                          progress=False)["random@4"].predictions for _ in range(2)]
    assert runs[0] == runs[1]


def test_query_similarity_scores_compare_patch_embeddings_with_the_question(tiny, rows):
    model, processor = tiny
    batch, _ = E.eval_batch(model, processor, rows[:2])
    with torch.no_grad():
        scores = E.query_similarity_scores(model, batch.features, batch.question_ids, batch.question_mask)
        full = model.model.prepare_multimodal_inputs(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                                     budget="full", patch_features=batch.features)
        words = model.get_input_embeddings()(batch.question_ids)
    for b in range(2):
        prompt = batch.input_ids[b][batch.attention_mask[b].bool()].tolist()
        start = full.attention_mask[b].tolist().index(1) + prompt.index(model.config.image_token_id)
        patches = full.inputs_embeds[b, start:start + 64]  # the 64 visual embeddings, raster order
        query = words[b][batch.question_mask[b].bool()].mean(0)
        expected = F.cosine_similarity(patches, query[None], dim=-1)
        torch.testing.assert_close(scores[b], expected, rtol=1e-4, atol=1e-5)


def test_query_sim_inputs_go_through_the_models_own_selection_path(tiny, rows):
    """Fed the allocator's own scores, the query-sim path reproduces the model's learned inputs exactly."""
    model, processor = tiny
    batch, _ = E.eval_batch(model, processor, rows[:3])
    with torch.no_grad():
        learned = model.model.prepare_multimodal_inputs(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                                        budget=16, patch_features=batch.features)
        batch.external_scores["query_sim"] = learned.patch_scores
        plan = E.method_plan(model, batch, E.parse_method("query_sim@16", BUDGETS), None)
        ours = model.model.prepare_multimodal_inputs(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                                     plan=plan)
    assert torch.equal(ours.inputs_embeds, learned.inputs_embeds)
    assert torch.equal(ours.visual_token_counts, learned.visual_token_counts)


def test_accuracy_counts_answers_the_model_really_gives(tiny, rows):
    model, processor = tiny
    methods = [E.parse_method(n, BUDGETS) for n in ("tier_4",)]
    first = E.run_methods(model, processor, rows, methods, batch_size=4, max_new_tokens=3, progress=False)
    # References for half the rows are what tier 4 answers: exactly those count as correct.
    relabelled = [dict(r, answers=[first["tier_4"].predictions[i]]) if i < 3 else r for i, r in enumerate(rows)]
    assert all(first["tier_4"].predictions[i] not in rows[i]["answers"] for i in range(3, NUM_SAMPLES))
    report = E.evaluate(model, processor, relabelled, methods=["tier_4"], batch_size=4, max_new_tokens=3,
                        calibration=False, progress=False)
    assert report["methods"]["tier_4"]["accuracy"] == 0.5
    assert report["calibration"] is None and report["per_tier"] is None


# ----------------------------------------------------------------------------------------------------------
# eval.py end to end: report, figures, model card
# ----------------------------------------------------------------------------------------------------------


def test_cli_report_has_every_method_and_field(cli_run):
    report, out = cli_run
    assert list(report["methods"]) == RUN_METHODS
    assert sorted(report["skipped"]) == sorted(set(ALL_METHODS) - set(RUN_METHODS))
    fields = {"accuracy", "mean_visual_tokens", "p95_visual_tokens", "per_task", "per_task_visual_tokens", "token_histogram",
              "latency_ms_per_query", "compression_ratio"}
    for name, method in report["methods"].items():
        assert fields <= set(method), name
        assert 0.0 <= method["accuracy"] <= 1.0 and method["latency_ms_per_query"] > 0
        assert sum(method["token_histogram"].values()) == NUM_SAMPLES
    assert set(report["calibration"]) == {"exact", "within_one", "over", "under", "n", "n_no_oracle"}
    assert report["calibration"]["n"] == NUM_SAMPLES
    assert set(report["per_tier"]) == {"4", "16", "100"}
    meta = report["meta"]
    assert {k: meta[k] for k in ("dataset", "split", "num_samples", "metric")} == {
        "dataset": "synthetic", "split": "test", "num_samples": NUM_SAMPLES, "metric": "exact_match"}
    assert meta["checkpoint"].endswith("tiny-checkpoint0") and meta["created"]
    # The commit of the code that evaluated: this checkout's HEAD (None only outside a git checkout).
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(E.__file__).parent, capture_output=True, text=True)
    assert meta["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert json.loads((out / "eval.json").read_text()) == report


def test_cli_token_counts_are_measured_not_the_tier_values(cli_run):
    methods = cli_run[0]["methods"]
    # Tier 100 is larger than the 64-patch grid: every patch, and the report says 64, not 100.
    for name in ("tier_100", "full", "uniform_pool@100", "random@100", "query_sim@100"):
        assert methods[name]["token_histogram"] == {"64": NUM_SAMPLES}, name
        assert methods[name]["compression_ratio"] == 1.0
    for k in (4, 16):
        assert methods[f"tier_{k}"]["mean_visual_tokens"] == k
        assert methods[f"query_sim@{k}"]["p95_visual_tokens"] == k


def test_cli_writes_figures_and_predictions(cli_run):
    _, out = cli_run
    for name in ("pareto.png", "heatmaps.png"):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.width > 200 and image.height > 200
            assert len(set(np.asarray(image.convert("L")).reshape(-1).tolist())) > 10, "not a blank canvas"
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == NUM_SAMPLES
    assert set(json.loads(lines[0])["predictions"]) == set(RUN_METHODS)


def test_cli_prints_the_table(checkpoint, cache_dir, tmp_path, capsys):
    eval_script.main([str(checkpoint), "--num-samples", "2", "--budget", "16", "--baselines", "none",
                      "--no-calibration", "--max-new-tokens", "1", "--output-dir", str(tmp_path), "--cache-dir",
                      cache_dir, "--quiet", "--heatmaps-per-task", "0"])
    printed = capsys.readouterr().out
    assert not (tmp_path / "heatmaps.png").exists(), "--heatmaps-per-task 0 draws no heatmaps"
    first_words = [line.split()[0] for line in printed.splitlines() if line.strip()]
    table_rows = [word for word in first_words if word in ALL_METHODS]
    assert table_rows == ["tier_16"]
    assert list(json.loads((tmp_path / "eval.json").read_text())["methods"]) == ["tier_16"]


def front_matter(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_carries_the_reports_numbers(cli_run):
    report, out = cli_run
    card = (out / "model_card.md").read_text()
    metadata = front_matter(card)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-text-to-text"
    assert metadata["license"] and metadata["tags"] and metadata["metrics"] == ["exact_match"]
    results = metadata["model-index"][0]["results"][0]
    accuracies = [m for m in results["metrics"] if m["type"] == "exact_match"]
    values = {m["name"].split("(")[1].split(",")[0]: m["value"] for m in accuracies}
    assert values == {n: report["methods"][n]["accuracy"] for n in ("auto", "tier_4", "tier_16", "tier_100", "full")}
    for name, method in report["methods"].items():
        row = next(line for line in card.splitlines() if line.startswith(f"| {name} |") or f"**{name}**" in line)
        assert f"{method['accuracy']:.3f}" in row and f"{method['mean_visual_tokens']:.1f}" in row
    assert "phase1.yaml" in card, "the training config passed in extra"


def test_model_card_from_a_hand_made_report(tmp_path, tiny):
    config = tiny[0].config
    runs = {"auto": hand_run("auto", BUDGETS, ["1", "2", "x"], [4, 16, 16], [0, 1, 1])}
    report = E.build_report(runs, [["1"], ["2"], ["3"]], ["a", "b", "b"], "anls", config,
                            meta={"checkpoint": "ckpt/arrcoc-demo", "dataset": "docvqa", "split": "validation",
                                  "dataset_source": "lmms-lab/DocVQA"})
    path = write_model_card(report, tmp_path / "card.md", {"license": "mit", "training": "phase 1: allocator"})
    card = path.read_text()
    metadata = front_matter(card)
    assert metadata["license"] == "mit" and metadata["datasets"] == ["lmms-lab/DocVQA"]
    assert metadata["model-index"][0]["name"] == "arrcoc-demo"
    assert "0.667" in card and "12.0" in card and "phase 1: allocator" in card


def test_model_card_architecture_says_whether_dropped_patches_are_folded(tmp_path, tiny):
    """The card describes the evaluated checkpoint's own compression (fold_dropped, recorded in the report's meta),
    not the library default."""
    config = copy.deepcopy(tiny[0].config)  # the fixture's model is shared
    runs = {"auto": hand_run("auto", BUDGETS, ["1", "2"], [4, 16], [0, 1])}
    for fold, words in ((True, "folded into their most similar kept one"), (False, "discarded, not folded")):
        config.fold_dropped = fold
        report = E.build_report(runs, [["1"], ["2"]], ["a", "b"], "anls", config, meta={"checkpoint": "ckpt/x"})
        assert report["meta"]["fold_dropped"] is fold
        architecture = write_model_card(report, tmp_path / f"card_{fold}.md").read_text().split("## Architecture")[1]
        assert words in architecture.split("##")[0]


def test_cli_on_a_local_copy_of_a_hub_dataset_uses_its_metric(checkpoint, tmp_path):
    import datasets

    pages = [Image.new("RGB", (80, 50), (255, 255, 255)) for _ in range(3)]
    raw = datasets.Dataset.from_dict(
        {"questionId": [1, 2, 3], "question": ["What is the total?", "Who signed?", "What is the date?"],
         "answers": [["12"], None, ["May 3"]], "image": pages},
        features=datasets.Features({"questionId": datasets.Value("int64"), "question": datasets.Value("string"),
                                    "answers": datasets.List(datasets.Value("string")), "image": datasets.Image()}),
    )
    raw.save_to_disk(tmp_path / "docvqa")
    report = eval_script.main([str(checkpoint), "--dataset", "docvqa", "--dataset-path", str(tmp_path / "docvqa"),
                               "--budget", "4", "--baselines", "uniform_pool", "--no-calibration",
                               "--max-new-tokens", "2", "--output-dir", str(tmp_path / "out"), "--quiet"])
    meta = report["meta"]
    assert (meta["metric"], meta["dataset_source"], meta["split"]) == ("anls", "lmms-lab/DocVQA", "validation")
    assert meta["num_samples"] == 2, "the question without reference answers is dropped"
    assert list(report["methods"]) == ["tier_4", "uniform_pool@4"]
    assert list(report["methods"]["tier_4"]["per_task"]) == ["docvqa"]
    assert (tmp_path / "out" / "heatmaps.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------------------------
# The measurement (statistics.py in the report): intervals, paired comparisons, policies, frontier, chance
# ----------------------------------------------------------------------------------------------------------


def measured_report(config, meta=None):
    """Auto (10 tokens on average), every forced tier, two through-checkpoint baselines (one cheaper than auto)
    and a trained full-token reference, on four hand-scored questions of two families."""
    runs = {
        "auto": hand_run("auto", BUDGETS, ["1", "2", "3", "x"], [4, 4, 16, 16], [0, 0, 1, 1]),
        "tier_4": hand_run("tier_4", BUDGETS, ["1", "x", "x", "x"], [4] * 4, [0] * 4),
        "tier_16": hand_run("tier_16", BUDGETS, ["1", "2", "3", "x"], [16] * 4, [1] * 4),
        "tier_100": hand_run("tier_100", BUDGETS, ["1", "2", "3", "4"], [64] * 4, [2] * 4),
        "uniform_pool@4": hand_run("uniform_pool@4", BUDGETS, ["x"] * 4, [4] * 4, [0] * 4),
        "uniform_pool@16": hand_run("uniform_pool@16", BUDGETS, ["x", "2", "x", "x"], [16] * 4, [1] * 4),
        "trained_ref": E.MethodRun(E.Method("trained_ref", "full", "full", "trained_ref"), ["1", "2", "3", "4"],
                                   [64] * 4, [2] * 4, 1.0),
    }
    tasks = ["local_color", "local_color", "global_count", "global_count"]
    return E.build_report(runs, [["1"], ["2"], ["3"], ["4"]], tasks, "exact_match", config, meta=meta,
                          trained={"ref": {"checkpoint": "outputs/ref/checkpoint", "methods": ["trained_ref"]}})


def test_every_accuracy_has_an_interval_and_n(tiny):
    report = measured_report(tiny[0].config)
    for name, method in report["methods"].items():
        low, high = method["interval"]
        assert low <= method["accuracy"] <= high and method["n"] == 4, name
        assert method["per_task_n"] == {"global_count": 2, "local_color": 2}
        for task, (low, high) in method["per_task_interval"].items():
            assert low <= method["per_task"][task] <= high
    assert report["methods"]["tier_100"]["interval"] == [1.0, 1.0], "constant scores: a zero-width interval"
    assert report["methods"]["trained_ref"]["checkpoint"] == "outputs/ref/checkpoint"
    assert json.loads(json.dumps(report)) == report


def test_auto_is_compared_paired_with_tiers_fair_baselines_and_the_trained_reference(tiny):
    comparisons = measured_report(tiny[0].config)["comparisons"]
    assert comparisons["auto_vs_tier"]["tier_4"]["difference"] == pytest.approx(0.5)
    assert comparisons["auto_vs_tier"]["tier_16"]["difference"] == 0.0
    assert comparisons["auto_vs_tier"]["tier_16"]["low"] == comparisons["auto_vs_tier"]["tier_16"]["high"] == 0.0
    # Auto spends 10 tokens on average: uniform_pool@16 is a fair comparison, uniform_pool@4 spends fewer.
    assert list(comparisons["auto_vs_baseline"]) == ["uniform_pool@16"]
    assert comparisons["auto_vs_baseline"]["uniform_pool@16"]["trained"] is False
    assert comparisons["baselines_with_fewer_tokens"] == ["uniform_pool@4"]
    reference = comparisons["auto_vs_trained_full"]["trained_ref"]
    assert reference["difference"] == pytest.approx(-0.25) and reference["accuracy_kept"] == 0.75
    assert reference["token_share"] == pytest.approx(10 / 64) and reference["mean_visual_tokens"] == [10.0, 64.0]


def test_auto_s_price_curve_is_compared_with_the_reference_and_the_headline_takes_an_eighth_of_its_tokens(tiny):
    runs = {
        "auto": hand_run("auto", BUDGETS, ["1", "2", "3", "x"], [4, 4, 16, 16], [0, 0, 1, 1]),
        # 8 tokens = 1/8 of the reference's 64: inside the share; 9 would not be.
        "auto(cost=1)": hand_run("auto(cost=1)", BUDGETS, ["1", "2", "x", "x"], [8] * 4, [1] * 4),
        "auto(cost=2)": hand_run("auto(cost=2)", BUDGETS, ["1", "x", "x", "x"], [4] * 4, [0] * 4),
        "trained_ref": E.MethodRun(E.Method("trained_ref", "full", "full", "trained_ref"), ["1", "2", "3", "4"],
                                   [64] * 4, [2] * 4, 1.0),
    }
    report = E.build_report(runs, [["1"], ["2"], ["3"], ["4"]], ["local_color"] * 4, "exact_match", tiny[0].config)
    curve = report["comparisons"]["auto_curve_vs_trained_full"]["trained_ref"]
    assert [p["method"] for p in curve] == ["auto(cost=2)", "auto(cost=1)", "auto"], "ordered by mean tokens"
    assert [p["token_share"] for p in curve] == [4 / 64, 8 / 64, 10 / 64]
    assert [p["accuracy_kept"] for p in curve] == [0.25, 0.5, 0.75]
    assert curve[1]["difference"] == pytest.approx(-0.5) and curve[1]["low"] <= -0.5 <= curve[1]["high"]
    line = next(line for line in headline(report) if line.startswith("Auto's curve at an eighth"))
    assert "`auto(cost=1)`, 0.500 at 8.0 tokens, 12.5% of `trained_ref`'s): 50% of its accuracy" in line
    runs["auto(cost=1)"] = hand_run("auto(cost=1)", BUDGETS, ["1", "2", "x", "x"], [9] * 4, [1] * 4)
    report = E.build_report(runs, [["1"], ["2"], ["3"], ["4"]], ["local_color"] * 4, "exact_match", tiny[0].config)
    assert "`auto(cost=2)`" in next(line for line in headline(report) if line.startswith("Auto's curve at an eighth"))
    del runs["auto(cost=2)"]
    report = E.build_report(runs, [["1"], ["2"], ["3"], ["4"]], ["local_color"] * 4, "exact_match", tiny[0].config)
    assert not any(line.startswith("Auto's curve at an eighth") for line in headline(report)), "no point that cheap"
    # A reference that never answers: no share of its accuracy, said as such (and flagged at chance), no crash.
    runs["auto(cost=2)"] = hand_run("auto(cost=2)", BUDGETS, ["1", "x", "x", "x"], [4] * 4, [0] * 4)
    runs["trained_ref"] = E.MethodRun(E.Method("trained_ref", "full", "full", "trained_ref"), ["x"] * 4, [64] * 4,
                                      [2] * 4, 1.0)
    report = E.build_report(runs, [["1"], ["2"], ["3"], ["4"]], ["local_color"] * 4, "exact_match", tiny[0].config)
    assert all(p["accuracy_kept"] is None for p in report["comparisons"]["auto_curve_vs_trained_full"]["trained_ref"])
    line = next(line for line in headline(report) if line.startswith("Auto's curve at an eighth"))
    assert "n/a of its accuracy" in line


def test_ablations_are_compared_at_their_auto_and_at_auto_s_tier_and_token_prices_are_not_baselines(tiny):
    config = tiny[0].config
    learned = lambda name, budget: E.Method(name, budget, "learned", "trained_no_tag")  # noqa: E731
    runs = {
        "auto": hand_run("auto", BUDGETS, ["1", "2", "3", "x"], [4, 4, 16, 16], [0, 0, 1, 1]),
        "auto(cost=1)": hand_run("auto(cost=1)", BUDGETS, ["1", "x", "x", "x"], [16] * 4, [1] * 4),
        "trained_no_tag": E.MethodRun(learned("trained_no_tag", "auto"), ["x", "2", "x", "x"], [4] * 4, [0] * 4, 1.0),
        "trained_no_tag@4": E.MethodRun(learned("trained_no_tag@4", 4), ["x"] * 4, [4] * 4, [0] * 4, 1.0),
        "trained_no_tag@16": E.MethodRun(learned("trained_no_tag@16", 16), ["1", "2", "3", "4"], [16] * 4, [1] * 4,
                                         1.0),
        "trained_no_tag@100": E.MethodRun(learned("trained_no_tag@100", 100), ["1"] * 4, [64] * 4, [2] * 4, 1.0),
    }
    report = E.build_report(runs, [["1"], ["2"], ["3"], ["4"]], ["local_color"] * 4, "exact_match", config)
    comparisons = report["comparisons"]
    # Auto spends 10 tokens: 16 is the nearest tier in log2 (|log2 16/10| < |log2 4/10|).
    assert list(comparisons["auto_vs_ablation"]) == ["trained_no_tag", "trained_no_tag@16"]
    assert comparisons["auto_vs_ablation"]["trained_no_tag"]["difference"] == pytest.approx(0.5)
    assert comparisons["auto_vs_baseline"] == {} and comparisons["baselines_with_fewer_tokens"] == []
    assert any("the ablation `trained_no_tag`" in line for line in headline(report))
    # An ablation trained and evaluated at auto's nearest tier (the constant-tier one) answers the same at @16 as at
    # its own budget: compared once.
    runs["trained_no_tag"] = E.MethodRun(learned("trained_no_tag", 16), ["1", "2", "3", "4"], [16] * 4, [1] * 4, 1.0)
    report = E.build_report(runs, [["1"], ["2"], ["3"], ["4"]], ["local_color"] * 4, "exact_match", config)
    assert list(report["comparisons"]["auto_vs_ablation"]) == ["trained_no_tag"]
    # Auto's curve meets each ablation at about its tokens: auto (10 tokens) the 4-token one above, auto(cost=1)
    # (16 tokens, right on question 1 only) this 16-token one.
    assert comparisons["auto_curve_vs_ablation"]["trained_no_tag"]["auto_point"] == "auto"
    assert comparisons["auto_curve_vs_ablation"]["trained_no_tag"]["difference"] == pytest.approx(0.5)
    equal = report["comparisons"]["auto_curve_vs_ablation"]
    assert list(equal) == ["trained_no_tag"], "only each ablation's own run, not its forced tiers"
    assert equal["trained_no_tag"]["auto_point"] == "auto(cost=1)"
    assert equal["trained_no_tag"]["difference"] == pytest.approx(-0.75)
    assert "(auto(cost=1), 0.250 at 16.0 tokens, against 1.000 at 16.0)" in " ".join(headline(report))
    # Nearest in log2, not in tokens: at 6 tokens, auto's 10 (x1.7) is nearer than auto(cost=9)'s 3 (/2), though
    # 3 is nearer in tokens.
    runs["auto(cost=9)"] = hand_run("auto(cost=9)", BUDGETS, ["x"] * 4, [3] * 4, [0] * 4)
    runs["trained_no_tag"] = E.MethodRun(learned("trained_no_tag", "auto"), ["x"] * 4, [4, 4, 8, 8], [0, 0, 1, 1],
                                         1.0)
    report = E.build_report(runs, [["1"], ["2"], ["3"], ["4"]], ["local_color"] * 4, "exact_match", config)
    assert report["comparisons"]["auto_curve_vs_ablation"]["trained_no_tag"]["auto_point"] == "auto"


def test_policies_frontier_chance_and_unseen_families(tiny):
    report = measured_report(tiny[0].config, meta={"trained_families": ["local_color"]})
    policies = report["policies"]
    assert [(p["budget"], p["accuracy"]) for p in policies["constant"]] == [(4, 0.25), (16, 0.75), (100, 1.0)]
    assert policies["best_constant"]["budget"] == 100
    # Oracle tiers 4, 16, 16, 100 -> 4, 16, 16 and 64 tokens.
    assert policies["oracle"] == {"accuracy": 1.0, "mean_tokens": 25.0, "n": 4, "n_no_oracle": 0}
    assert policies["auto"] == {"accuracy": 0.75, "mean_tokens": 10.0, "n": 4}
    assert policies["calibration"]["exact"] == 0.5 and policies["calibration"]["constant_tier"] == 1
    # The family router: local_color's best tier is 16 (tier 100 ties at more tokens), global_count's 100 (64 tokens).
    router = policies["family_router"]
    assert router["tiers"] == {"global_count": 100, "local_color": 16}
    assert (router["accuracy"], router["mean_tokens"], router["n"]) == (1.0, 40.0, 4)
    assert router["minus_envelope"]["frontier_accuracy"] == pytest.approx(0.875)  # tiers 16 and 100, halfway
    assert router["minus_envelope"]["difference"] == pytest.approx(0.125)
    assert router["auto_minus_it"]["difference"] == pytest.approx(-0.25)
    assert "global_count 100, local_color 16): 1.000 at 40.0 tokens, +12.5 points" in " ".join(headline(report))
    frontier = report["frontier"]
    weight = (10 - 4) / (16 - 4)  # the envelope mixes tiers 4 and 16 linearly in tokens
    assert (frontier["lower_tier"], frontier["upper_tier"]) == (4, 16) and frontier["weight"] == pytest.approx(weight)
    assert frontier["frontier_accuracy"] == pytest.approx((1 - weight) * 0.25 + weight * 0.75)
    assert frontier["difference"] == pytest.approx(0.75 - frontier["frontier_accuracy"])
    chance = report["chance"]["per_task"]["local_color"]
    assert (chance["majority"], chance["n_distinct"]) == (0.5, 2)
    assert report["unseen_families"] == ["global_count"]
    assert measured_report(tiny[0].config)["unseen_families"] is None, "no training record: unknown"


def test_need_counts_a_lucky_small_tier_as_no_need(tiny):
    # Question 0 is answered at 4 tokens, missed at 16 and answered at 64: its oracle-minimal tier is 4, a guess;
    # the stable tier (every larger tier answers) is 100 (64 tokens).
    runs = {
        "auto": hand_run("auto", BUDGETS, ["1", "2", "3", "x"], [4, 4, 16, 16], [0, 0, 1, 1]),
        "auto(cost=-2)": hand_run("auto(cost=-2)", BUDGETS, ["1", "2", "3", "4"], [64] * 4, [2] * 4),
        "tier_4": hand_run("tier_4", BUDGETS, ["1", "x", "x", "x"], [4] * 4, [0] * 4),
        "tier_16": hand_run("tier_16", BUDGETS, ["x", "2", "3", "x"], [16] * 4, [1] * 4),
        "tier_100": hand_run("tier_100", BUDGETS, ["1", "2", "3", "4"], [64] * 4, [2] * 4),
    }
    tasks = ["local_color", "local_color", "global_count", "global_count"]
    report = E.build_report(runs, [["1"], ["2"], ["3"], ["4"]], tasks, "exact_match", tiny[0].config)
    need = report["policies"]["need"]
    assert need["oracle_minimal"]["local_color"]["mean"] == 10.0  # 4 and 16 tokens
    assert need["stable"]["local_color"]["mean"] == 40.0  # 64 and 16
    assert need["stable"]["global_count"]["mean"] == need["oracle_minimal"]["global_count"]["mean"] == 40.0
    assert need["spent"]["auto"]["local_color"]["mean"] == 4.0 and need["spent"]["auto"]["global_count"]["n"] == 2
    assert set(need["spent"]) == set(need["calibration_stable"]) == {"auto", "auto(cost=-2)"}
    # Stable tiers 2, 1, 1, 2: auto (0, 0, 1, 1) matches one; the best constant (1, the smaller of a tie) two.
    auto = need["calibration_stable"]["auto"]
    assert (auto["exact"], auto["constant_tier"], auto["constant_exact"]) == (0.25, 1, 0.5)
    assert need["calibration_stable"]["auto(cost=-2)"]["exact"] == 0.5
    assert "the best-matching price (chosen on these questions), auto(cost=-2), on 0.50" in " ".join(headline(report))
    assert (auto["over"], auto["under"]) == (0.0, 0.75)
    assert report["policies"]["calibration"]["exact"] == 0.5, "the oracle-minimal calibration is unchanged"
    from tools.render_readme import need_table

    table = need_table(need)
    assert table[2] == ("| mean visual tokens (95% interval) | global_count | local_color | share with tier = stable "
                        "tier |")
    assert "| stable tier | 40.0 [16.0, 64.0] | 40.0 [16.0, 64.0] |  |" in table
    assert "| auto | 16.0 [16.0, 16.0] | 4.0 [4.0, 4.0] | 0.25 |" in table
    # A question the largest tier misses has no stable tier: it leaves every row but the oracle-minimal one.
    runs["tier_100"] = hand_run("tier_100", BUDGETS, ["1", "2", "3", "x"], [64] * 4, [2] * 4)
    report = E.build_report(runs, [["1"], ["2"], ["3"], ["4"]], tasks, "exact_match", tiny[0].config)
    need = report["policies"]["need"]
    assert need["stable"]["global_count"]["n"] == need["spent"]["auto"]["global_count"]["n"] == 1
    assert need["spent"]["auto"]["global_count"]["mean"] == 16.0 and need["oracle_minimal"]["global_count"]["n"] == 1
    assert need["calibration_stable"]["auto"]["n_no_oracle"] == 1


def test_more_tokens_pairs_every_forced_budget_and_flags_a_larger_one_below_a_smaller(tiny):
    report = measured_report(tiny[0].config)
    check = report["more_tokens"]
    # Tiers 4, 16, 100 (64 tokens): every pair, larger minus smaller, on the same questions; none hurts.
    assert [(p["smaller"], p["larger"]) for p in check["pairs"]] == [
        ("tier_4", "tier_16"), ("tier_4", "tier_100"), ("tier_16", "tier_100")]
    assert [p["difference"] for p in check["pairs"]] == pytest.approx([0.5, 0.75, 0.25])
    assert check["hurts"] == [] and check["worst"]["larger"] == "tier_100" and check["worst"]["smaller"] == "tier_16"
    assert "no pair below 0 beyond its interval; lowest tier_100 minus tier_16 +25.0 points" in " ".join(
        headline(report))
    # 200 questions: tier 16 misses 30 that tier 4 answers (its whole interval below 0); tier 64 misses 2 of them
    # (below 0, but its interval reaches over 0: not flagged, yet the lowest pair but one).
    small, large, slightly = [1.0] * 200, [0.0] * 30 + [1.0] * 170, [0.0] * 2 + [1.0] * 198
    check = more_tokens({"tier_4": small, "tier_16": large, "tier_64": slightly})
    assert [(p["smaller"], p["larger"]) for p in check["hurts"]] == [("tier_4", "tier_16")]
    crossing = next(p for p in check["pairs"] if p["larger"] == "tier_64" and p["smaller"] == "tier_4")
    assert crossing["difference"] < 0 <= crossing["high"] and crossing not in check["hurts"]
    assert check["worst"] == check["hurts"][0]
    line = more_tokens_line(check)
    assert "1 pair below 0 beyond its interval (tier_16 minus tier_4 -15.0 points [" in line and "lowest" not in line
    check = more_tokens({"tier_4": small, "tier_64": slightly})
    assert check["hurts"] == [] and "lowest tier_64 minus tier_4 -1.0 points" in more_tokens_line(check)
    assert more_tokens({"tier_4": small}) is None, "one budget: nothing to pair"
    # By tokens; full beside the tier that keeps every patch is the same budget, not more tokens.
    methods = {"full": {"mean_visual_tokens": 256.0}, "auto": {"mean_visual_tokens": 9.0},
               "tier_256": {"mean_visual_tokens": 256.0}, "tier_64": {"mean_visual_tokens": 64.0},
               "tier_8": {"mean_visual_tokens": 8.0}}
    assert own_budgets(methods) == ["tier_8", "tier_64", "tier_256"]
    methods["full"]["mean_visual_tokens"] = 300.0
    assert own_budgets(methods) == ["tier_8", "tier_64", "tier_256", "full"]


def test_a_report_without_auto_has_no_comparisons(tiny):
    runs = {"tier_4": hand_run("tier_4", BUDGETS, ["1", "x"], [4, 4], [0, 0])}
    report = E.build_report(runs, [["1"], ["2"]], ["a", "a"], "exact_match", tiny[0].config)
    assert (report["comparisons"], report["policies"], report["frontier"]) == (None, None, None)
    assert report["more_tokens"] is None
    assert report["methods"]["tier_4"]["n"] == 2


def test_token_prices_name_auto_methods_and_trace_its_curve_against_the_frontier(tiny):
    method = E.parse_method("auto(cost=0.5)", BUDGETS)
    assert (method.budget, method.selection, method.kind, method.budget_cost) == ("auto", "learned", "auto_cost", 0.5)
    for bad in ("auto(cost=nan)", "auto(cost=cheap)", "auto(cost=)"):
        with pytest.raises(ValueError, match="not a finite number"):
            E.parse_method(bad, BUDGETS)
    names = E.method_names(BUDGETS, "all", baselines=(), budget_costs=(-1, 0, 1))
    # Price 0 is a point of its own: "auto" runs at the model's own price (config.budget_cost), 0 at the predicted tier.
    assert names[:4] == ["auto", "auto(cost=-1)", "auto(cost=0)", "auto(cost=1)"] and "tier_4" in names and "full" in names
    assert E.method_names(BUDGETS, 16, baselines=(), budget_costs=(1,)) == ["tier_16"], "a fixed tier has no price"
    # A cheap price (4 tokens on every question) and an expensive one (64): with auto, three points of a curve.
    report = measured_report(tiny[0].config)
    assert report["auto_curve"] is None, "auto alone is no curve"
    runs = {
        "auto": hand_run("auto", BUDGETS, ["1", "2", "3", "x"], [4, 4, 16, 16], [0, 0, 1, 1]),
        "auto(cost=2)": hand_run("auto(cost=2)", BUDGETS, ["1", "2", "x", "x"], [4] * 4, [0] * 4),
        "auto(cost=-2)": hand_run("auto(cost=-2)", BUDGETS, ["1", "2", "3", "4"], [64] * 4, [2] * 4),
        "tier_4": hand_run("tier_4", BUDGETS, ["1", "x", "x", "x"], [4] * 4, [0] * 4),
        "tier_16": hand_run("tier_16", BUDGETS, ["1", "2", "3", "x"], [16] * 4, [1] * 4),
        "tier_100": hand_run("tier_100", BUDGETS, ["1", "2", "3", "4"], [64] * 4, [2] * 4),
    }
    report = E.build_report(runs, [["1"], ["2"], ["3"], ["4"]], ["local_color"] * 4, "exact_match", tiny[0].config)
    curve = report["auto_curve"]
    assert [p["method"] for p in curve] == ["auto(cost=2)", "auto", "auto(cost=-2)"]  # cheapest first
    assert [p["budget_cost"] for p in curve] == [2.0, None, -2.0], "hand-made auto names no price (runner writes it)"
    cheap = curve[0]
    assert (cheap["auto_mean_tokens"], cheap["accuracy"], cheap["frontier_accuracy"]) == (4.0, 0.5, 0.25)
    assert cheap["difference"] == pytest.approx(0.25) and cheap["low"] <= 0.25 <= cheap["high"]
    assert curve[2]["difference"] == 0.0, "at the largest tier auto is the frontier"
    assert "Auto's own curve" in " ".join(headline(report))


def test_synthetic_evaluation_can_keep_the_taught_families(tmp_path):
    data = E.load_eval_dataset("synthetic", num_samples=12, image_size=64, patch_size=8, cache_dir=str(tmp_path),
                               families=("local_color", "global_count"))
    assert len(data.dataset) == 12 and set(data.dataset["task"]) <= {"local_color", "global_count"}
    with pytest.raises(ValueError, match="Hub dataset"):
        E.load_eval_dataset("docvqa", families=("local_color",))
    assert eval_script.families_from("local_color, chart") == ("local_color", "chart")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown synthetic families"):
        eval_script.families_from("local_colour")
    count = whole_number(0)  # eval.py's --heatmaps-per-task
    assert count("0") == 0 and count("3") == 3
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="0 or more"):
            count(bad)


def test_auto_runs_are_recorded_at_the_models_own_price(tiny):
    from modeling_arrcoc.evaluation.runner import at_models_price

    model = tiny[0]
    model.config.budget_cost = 0.014
    try:
        assert at_models_price(model, E.parse_method("auto", BUDGETS)).budget_cost == 0.014
        assert at_models_price(model, E.parse_method("auto(cost=0)", BUDGETS)).budget_cost == 0.0
        assert at_models_price(model, E.parse_method("tier_4", BUDGETS)).budget_cost is None
    finally:
        model.config.budget_cost = 0.0


def test_compare_predictions_pairs_two_runs_on_the_same_questions(tmp_path):
    """tools.compare_predictions: accuracies by the runs' own metric, the paired difference, and same-answer /
    same-token shares; runs over other questions, by other metrics or without a named method are refused."""
    from modeling_arrcoc.evaluation.agreement import compare_runs
    from modeling_arrcoc.evaluation.seeds import load_run
    from tools.compare_predictions import main

    def run(folder, answers, tokens, questions="abcd", metric="exact_match"):
        folder = tmp_path / folder
        folder.mkdir()
        (folder / "eval.json").write_text(json.dumps({"meta": {"metric": metric}}))
        rows = [{"task": "t", "question": q, "answers": ["1"], "predictions": {"auto": a, "tier_4": "1"},
                 "visual_token_counts": {"auto": t, "tier_4": 4}} for q, a, t in zip(questions, answers, tokens)]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return load_run(folder)

    first, second = run("a", ["1", "1", "2", "2"], [4, 8, 4, 8]), run("b", ["1", "2", "1", "1"], [4, 8, 16, 8])
    result = compare_runs(first, second)
    assert result["auto"]["accuracy_first"] == 0.5 and result["auto"]["accuracy_second"] == 0.75
    assert result["auto"]["difference"] == pytest.approx(0.25) and result["auto"]["metric"] == "exact_match"
    assert result["auto"]["same_answer"] == 0.25 and result["auto"]["same_tokens"] == 0.75
    assert result["tier_4"]["same_answer"] == 1.0 and result["tier_4"]["difference"] == 0.0
    with pytest.raises(ValueError, match="other questions"):
        compare_runs(first, run("c", ["1"] * 4, [4] * 4, questions="abcx"))
    with pytest.raises(ValueError, match="different metrics"):
        compare_runs(first, run("d", ["1"] * 4, [4] * 4, metric="anls"))
    with pytest.raises(ValueError, match="not in both"):
        compare_runs(first, second, methods=["tier_8"])
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text())["methods"]["auto"]["same_tokens"] == 0.75

    # Two methods of one run, paired on the same questions; one family's questions only.
    within = compare_runs(first, first, methods=["tier_4:auto"])["tier_4:auto"]
    assert within["accuracy_first"] == 1.0 and within["accuracy_second"] == 0.5 and within["same_tokens"] == 0.5
    mixed = run("e", ["1", "2", "1", "1"], [4, 8, 16, 8])
    for row in mixed["rows"][:2]:
        row["task"] = "count"
    first["rows"][0]["task"] = first["rows"][1]["task"] = "count"
    counted = compare_runs(first, mixed, methods=["auto"], family="count")["auto"]
    assert counted["n"] == 2 and counted["accuracy_first"] == 1.0 and counted["accuracy_second"] == 0.5
    with pytest.raises(ValueError, match="no 'chart' questions"):
        compare_runs(first, mixed, family="chart")
    with pytest.raises(ValueError, match="not in both"):
        compare_runs(second, second, methods=["auto:tier_8"])


def test_kept_cells_counts_what_each_ranking_keeps(checkpoint, cache_dir, tmp_path):
    """tools.kept_cells: the answer's cells (local_key's markers too) and the page's keyed cells among the top K of a
    ranking; on a saved checkpoint both rankings, shares in [0, 1], never fewer with more K, all at every patch."""
    from tools.kept_cells import kept_shares, main, question_cells

    row = {"task": "local_key", "boxes": [[16.0, 8.0, 24.0, 16.0]], "extra_boxes": [[[0.0, 24.0, 8.0, 32.0]]]}
    cells = question_cells(row, patch_size=8)
    assert cells == {"answer": {(1, 2)}, "with marker": {(1, 2), (1, 1)}, "keyed": {(1, 2), (1, 1), (3, 0)}}
    scores = np.zeros(16)  # a 4 x 4 grid, raster order: (1, 2) is patch 6, (1, 1) patch 5, (3, 0) patch 12
    scores[[6, 12, 5]] = [3.0, 2.0, 1.0]
    shares = kept_shares(scores, cells, ks=(1, 2, 3), grid_width=4)
    assert shares[1] == {"answer": 1.0, "with marker": 0.5, "keyed": pytest.approx(1 / 3)}
    assert shares[2] == {"answer": 1.0, "with marker": 0.5, "keyed": pytest.approx(2 / 3)}
    assert shares[3] == {"answer": 1.0, "with marker": 1.0, "keyed": 1.0}

    result = main([str(checkpoint), "--method", f"copy={checkpoint}", "--num-samples", "6", "--ks", "1", "64",
                   "--cache-dir", cache_dir, "--json", str(tmp_path / "kept.json")])
    assert sum(block["n"] for block in result.values()) == 6
    for block in result.values():
        assert set(block) == {"n", "arrcoc:learned", "arrcoc:hotspot", "copy:learned", "copy:hotspot"}
        for by_k in (v for k, v in block.items() if k != "n"):
            for measure, share in by_k[1].items():
                assert 0.0 <= share <= by_k[64][measure] == 1.0
    assert json.loads((tmp_path / "kept.json").read_text())["num_samples"] == 6


def test_per_answer_splits_a_family_by_its_answer(tmp_path, capsys):
    """tools.per_answer: one family's questions grouped by reference answer (counts in numeric order), each method's
    accuracy and mean tokens per group; tokens are shown only where they vary; a family the run lacks is refused."""
    from modeling_arrcoc.evaluation.seeds import load_run
    from tools.per_answer import main, per_answer

    (tmp_path / "eval.json").write_text(json.dumps({"meta": {"metric": "exact_match"}}))
    cases = [("count", "10", "10", 16), ("count", "9", "8", 8), ("count", "9", "9", 16), ("count", "2", "2", 4),
             ("color", "3", "3", 4)]
    rows = [{"task": task, "question": f"q{i}", "answers": [answer], "predictions": {"auto": said, "tier_8": answer},
             "visual_token_counts": {"auto": tokens, "tier_8": 8}} for i, (task, answer, said, tokens) in enumerate(cases)]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    table = per_answer(load_run(tmp_path), "count", ["auto", "tier_8"])
    assert [(row["answer"], row["n"]) for row in table] == [("2", 1), ("9", 2), ("10", 1)]
    assert table[1]["auto"] == (0.5, 12.0) and table[1]["tier_8"] == (1.0, 8.0)
    main([str(tmp_path), "--family", "count", "--methods", "auto", "tier_8"])
    printed = capsys.readouterr().out
    assert "auto tokens" in printed and "tier_8 tokens" not in printed and "| 9 | 2 | 0.50 | 1.00 | 12.0 |" in printed
    with pytest.raises(SystemExit, match="no 'chart' questions"):
        main([str(tmp_path), "--family", "chart"])


def test_eval_vision_autocast_option_sets_or_clears_the_checkpoints_own(tmp_path, tester):
    """--vision-autocast-dtype: a dtype puts SAM under autocast, 'none' turns a checkpoint's own setting off, and
    leaving it out keeps what the checkpoint's config says."""
    from transformers import AutoProcessor

    from conftest import TINY_PRESET

    model = tester.get_model()
    model.config.vision_autocast_dtype = "bfloat16"
    model.save_pretrained(tmp_path)
    AutoProcessor.from_pretrained(TINY_PRESET).save_pretrained(tmp_path)
    assert eval_script.parse_args([str(tmp_path), "--vision-autocast-dtype", "none"]).vision_autocast_dtype == "none"
    for option, expected in ((None, "bfloat16"), ("none", None), ("float16", "float16")):
        loaded, _ = eval_script.load_checkpoint(str(tmp_path), vision_autocast_dtype=option)
        assert loaded.config.vision_autocast_dtype == expected, option
    with pytest.raises(SystemExit):
        eval_script.parse_args([str(tmp_path), "--vision-autocast-dtype", "float64"])


def test_model_card_says_which_rows_are_this_checkpoint():
    """The card's evaluation header names baselines run through this checkpoint only when there are some, and the
    `trained_*` rows as other checkpoints only when there are some (make demo now runs no untrained baselines)."""
    from modeling_arrcoc.evaluation.model_card import _whose_methods

    through = _whose_methods({"methods": {"auto": {}, "uniform_pool@4": {}}})
    assert "through this same checkpoint" in through and "other checkpoints" not in through
    trained = _whose_methods({"methods": {"auto": {}, "trained_full": {}}, "trained_methods": {"full": {}}})
    assert "other checkpoints" in trained and "through this same checkpoint" not in trained
    assert _whose_methods({"methods": {"auto": {}, "tier_4": {}}}) == ""


def test_price_sweep_sets_each_familys_tokens_beside_its_need():
    """tools.price_sweep: per price, each family's mean tokens on the rows the largest tier answers; the need is the
    oracle-minimal tier's tokens on the rows some tier answers; a family inside its need interval is starred, one the
    largest tier never answers is n/a, and the fit's price is marked."""
    from tools.price_sweep import format_table, sweep_table

    # 3 tiers (4, 8, 16 tokens); rows 0-1 family "a", rows 2-4 family "b", row 5 family "c"; rows 4-5: no tier answers.
    exact = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0], [0, 1, 0]])
    tasks = ["a", "a", "b", "b", "b", "c"]
    points = [{"budget_cost": 0.1, "accuracy": 0.4, "mean_tokens": 6.4, "margin": 0.01,
               "counts": np.array([4, 8, 8, 16, 4, 4])},
              {"budget_cost": 1.0, "accuracy": 0.2, "mean_tokens": 4.0, "margin": 0.0, "counts": np.full(6, 4)}]
    table = sweep_table(points, exact, [4, 8, 16], tasks, chosen=0.1)
    assert table["need"]["a"]["mean"] == 6.0 and table["need"]["a"]["n"] == 2  # tiers 0 and 1: 4 and 8 tokens
    assert table["need"]["b"]["mean"] == 16.0 and table["need"]["b"]["n"] == 2  # row 4 has no oracle tier
    assert table["rows"][0]["families"] == {"a": 6.0, "b": 12.0, "c": None}  # rows 4, 5 left out: tier 16 misses them
    assert table["rows"][1]["families"] == {"a": 4.0, "b": 4.0, "c": None}
    assert [row["chosen"] for row in table["rows"]] == [True, False]
    text = format_table(table)
    assert "| 0.1 <- fit | 0.400 | 6.4 | +1.0 | 6.0* | 12.0 | n/a |" in text
    assert "| 1 | 0.200 | 4.0 | +0.0 | 4.0* | 4.0 | n/a |" in text
    assert text.splitlines()[-1] == "| need (oracle-minimal) | | | | 6.0 [4.0, 8.0] | 16.0 [16.0, 16.0] | 8.0 [8.0, 8.0] |"


def test_price_sweep_runs_on_a_saved_checkpoint(checkpoint, cache_dir, tmp_path, capsys):
    """tools.price_sweep end to end: a saved checkpoint and a phase YAML's data keys give one row per price, the
    fit's rule marks exactly one of them, and bad prices or row counts are refused by name."""
    from tools.price_sweep import main

    config = tmp_path / "phase.yaml"
    config.write_text(f"dataset: synthetic\nsynthetic_num_train: 4\nsynthetic_cache_dir: {cache_dir}\n"
                      f"output_dir: {tmp_path / 'out'}\n")
    table = main([str(checkpoint), str(config), "--rows", "6", "--prices", "0,1,50"])
    assert [row["budget_cost"] for row in table["rows"]] == [0.0, 1.0, 50.0]
    assert sum(row["chosen"] for row in table["rows"]) == 1
    assert table["rows"][-1]["mean_tokens"] <= table["rows"][0]["mean_tokens"], "a higher price buys no more tokens"
    assert sum(need["n"] for need in table["need"].values()) <= 6
    printed = capsys.readouterr().out
    assert "6 validation rows" in printed and "| need (oracle-minimal) |" in printed and "<- fit" in printed
    for bad in (["--prices", "0,,1"], ["--prices", "0,inf"], ["--rows", "0"]):
        with pytest.raises(SystemExit):
            main([str(checkpoint), str(config), *bad])
        assert f"argument {bad[0]}" in capsys.readouterr().err
