"""Fair baselines (issue #13): every selection is one protocol. At K = N (every patch kept) each selection without
the relevance tag gives the logits of "full"; with the tag, learned differs from full only through the tag; and a
checkpoint trained with a selection runs it without being told.

The tester's tiers are (4, 16, 100) on an 8x8 grid: tier 100 keeps all N = 64 patches."""

import json

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

import modeling_arrcoc  # noqa: F401  (registers the Auto classes)
from conftest import TINY_PRESET, ArrCocModelTester
from modeling_arrcoc import ArrCocConfig
from modeling_arrcoc import evaluation as E
from modeling_arrcoc.configuration_arrcoc import SELECTION_METHODS
from modeling_arrcoc.data.collator import ArrCocCollator
from modeling_arrcoc.data.synthetic import FAMILIES, NUM_VISUAL_WORDS
from modeling_arrcoc.evaluation import trained_families
from modeling_arrcoc.explanation import prompt_batch
from modeling_arrcoc.methods import learning_curve_methods
from modeling_arrcoc.modeling_arrcoc import SELECTIONS
from modeling_arrcoc.provenance import TRAINING_CONFIG
from modeling_arrcoc.training import recipe
from modeling_arrcoc.training.arguments import ArrCocTrainingArguments
from modeling_arrcoc.training.phases import apply_phase
from modeling_arrcoc.training.trainer import ArrCocTrainer

import eval as eval_script  # its main and argument parsing are what these tests run

ALL_PATCHES = 100  # a tier above the grid: K = N


@pytest.fixture
def tester():
    return ArrCocModelTester()


def trained_looking(model, seed=1):
    """Every zero-initialised layer (relevance tag, fold projection, tier norms) given random values, so the
    equalities below are not trivially true of a model that has never trained."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.abs().sum():
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def logits(model, inputs, **kwargs):
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     pixel_values=inputs["pixel_values"], **kwargs).logits


def test_selection_vocabulary_is_the_configs():
    assert SELECTIONS == SELECTION_METHODS
    with pytest.raises(Exception, match="selection_method"):
        ArrCocConfig(selection_method="query_sim")  # training-free: evaluation-only, never a model's own


@pytest.mark.parametrize("selection", ["learned", "hotspot", "random"])
def test_top_k_selections_keep_every_patch_at_k_equal_n_and_match_full(tester, selection):
    """Top-K with K = N keeps every patch in raster order whatever the ranking, and with fold on nothing is
    dropped, so nothing is folded; the straight-through gate is 1 up to float rounding (1 + s - s)."""
    model = trained_looking(tester.get_model(relevance_tag=False))
    inputs = tester.prepare_inputs()
    full = logits(model, inputs, selection="full")
    torch.testing.assert_close(logits(model, inputs, budget=ALL_PATCHES, selection=selection), full, rtol=0,
                               atol=1e-6)
    counts = model(**{k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}, budget=ALL_PATCHES,
                   selection=selection).visual_token_counts
    assert counts.tolist() == [tester.num_patches] * tester.batch_size


def test_uniform_pooling_at_k_equal_n_is_the_identity_and_matches_full(tester):
    """Uniform pooling to the grid's own shape is the identity. It matches full exactly without the fold; with the
    fold on, top-K at K = N adds the fold projection's bias (its output for "nothing folded") to every token, a
    learned constant pooling never adds: zero that bias and they match again."""
    inputs = tester.prepare_inputs()
    model = trained_looking(tester.get_model(relevance_tag=False, fold_dropped=False))
    torch.testing.assert_close(logits(model, inputs, budget=ALL_PATCHES, selection="uniform"),
                               logits(model, inputs, selection="full"), rtol=0, atol=1e-6)

    folded = trained_looking(tester.get_model(relevance_tag=False))
    bias = folded.model.allocator.compression_heads.fold_proj.bias
    assert bias.abs().sum() > 0
    uniform = logits(folded, inputs, budget=ALL_PATCHES, selection="uniform")
    assert not torch.allclose(uniform, logits(folded, inputs, selection="full"), atol=1e-4)
    with torch.no_grad():
        bias.zero_()
    torch.testing.assert_close(uniform, logits(folded, inputs, selection="full"), rtol=0, atol=1e-6)


def test_full_keeps_every_patch_whatever_the_budget(tester):
    model = tester.get_model(selection_method="full")
    inputs = tester.prepare_inputs()
    plan = model.plan_allocation(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                 pixel_values=inputs["pixel_values"], budget=4)
    assert plan.selection == "full" and plan.visual_token_counts.tolist() == [64] * 3
    assert model.model.replan(plan, 4).visual_token_counts.tolist() == [64] * 3, "calibration's replan stays full"


def test_relevance_tag_is_the_only_difference_between_learned_and_full(tester):
    model = trained_looking(tester.get_model())  # relevance_tag=True, ARR-COC
    inputs = tester.prepare_inputs()
    learned = logits(model, inputs, budget=ALL_PATCHES, selection="learned")
    full = logits(model, inputs, selection="full")
    assert (learned - full).abs().max() > 1e-4, "the tag reaches the LLM"
    with torch.no_grad():
        model.model.quality_adapter.relevance_embedding.weight.zero_()
    torch.testing.assert_close(logits(model, inputs, budget=ALL_PATCHES, selection="learned"), full, rtol=0,
                               atol=1e-6)


def test_without_the_tag_the_relevance_embedding_is_never_read(tester):
    model = trained_looking(tester.get_model(relevance_tag=False))
    inputs = tester.prepare_inputs()
    before = logits(model, inputs, budget=16)
    with torch.no_grad():
        model.model.quality_adapter.relevance_embedding.weight.mul_(5.0)
    torch.testing.assert_close(logits(model, inputs, budget=16), before, rtol=0, atol=0)


def test_todays_configs_load_as_arrcoc(tester):
    values = tester.get_config().to_dict()
    for key in ("selection_method", "relevance_tag"):
        values.pop(key)
    config = ArrCocConfig(**values)
    assert (config.selection_method, config.relevance_tag) == ("learned", True)


def test_a_uniform_checkpoint_generates_with_uniform_pooling_unasked(tester, tmp_path):
    model = trained_looking(tester.get_model(selection_method="uniform", relevance_tag=False))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert loaded.config.selection_method == "uniform" and loaded.config.relevance_tag is False
    inputs = tester.prepare_inputs()
    prompt = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    plan = loaded.plan_allocation(**prompt, budget=16)
    assert plan.selection == "uniform" and plan.selection_scores is None
    options = dict(budget=16, max_new_tokens=4, do_sample=False, pad_token_id=0)
    unasked = loaded.generate(**prompt, **options)
    torch.testing.assert_close(unasked, model.generate(**prompt, selection="uniform", **options), rtol=0, atol=0)
    uniform_logits = logits(loaded, inputs, budget=16)
    torch.testing.assert_close(uniform_logits, logits(loaded, inputs, budget=16, selection="uniform"), rtol=0, atol=0)
    assert not torch.allclose(uniform_logits, logits(loaded, inputs, budget=16, selection="learned"), atol=1e-5)


# --- the learned compressor: uniform pooling's windows, a learned map instead of the mean -------------------------

def test_an_untrained_compressor_is_uniform_pooling(tester, tmp_path):
    """A fresh compressor averages its window, so it starts as uniform pooling; so does one a learned checkpoint
    grows when it is loaded as the compressor baseline (init_from the base: the missing maps are initialised)."""
    inputs = tester.prepare_inputs()
    model = trained_looking(tester.get_model(selection_method="compress", relevance_tag=False))
    for budget in (4, 16):
        torch.testing.assert_close(logits(model, inputs, budget=budget),
                                   logits(model, inputs, budget=budget, selection="uniform"), rtol=0, atol=1e-5)
    trained_looking(tester.get_model(relevance_tag=False)).save_pretrained(tmp_path)
    grown = AutoModelForImageTextToText.from_pretrained(tmp_path, selection_method="compress").eval()
    assert sorted(grown.model.allocator.compressor.windows) == [4, 16]
    torch.testing.assert_close(logits(grown, inputs, budget=4), logits(grown, inputs, budget=4, selection="uniform"),
                               rtol=0, atol=1e-5)


def test_the_compressor_trains_and_its_checkpoint_keeps_it(tester, tmp_path):
    """The answer loss reaches the compressor's maps; after a step the tokens are no longer a mean, and a saved
    checkpoint loads them back (not re-initialised to the mean) and runs them unasked."""
    inputs = tester.prepare_inputs()
    model = trained_looking(tester.get_model(selection_method="compress", relevance_tag=False)).train()
    compressor = model.model.allocator.compressor
    optimizer = torch.optim.SGD(compressor.parameters(), lr=1.0)
    model(**inputs, budget=4).loss.backward()
    assert compressor.merges["4"].weight.grad.abs().sum() > 0
    optimizer.step()
    model.eval()
    assert not torch.allclose(logits(model, inputs, budget=4), logits(model, inputs, budget=4, selection="uniform"),
                              atol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(loaded, inputs, budget=4), logits(model, inputs, budget=4), rtol=0, atol=0)


def test_the_compressor_runs_only_where_it_was_trained(tester):
    from modeling_arrcoc.methods import Method, unsupported_reason

    model = tester.get_model(relevance_tag=False)  # learned: no compressor
    inputs = tester.prepare_inputs()
    with pytest.raises(ValueError, match="needs a checkpoint trained with it"):
        logits(model, inputs, budget=4, selection="compress")
    method = Method("compressor@4", 4, "compress", "compressor")
    assert "needs a checkpoint trained with selection_method compress" in unsupported_reason(method, model.config)
    trained = tester.get_config(selection_method="compress")
    assert unsupported_reason(method, trained) is None
    with pytest.raises(ValueError, match="windows that tile the grid"):
        ArrCocModelTester(budgets=(4, 12, 100)).get_model(selection_method="compress")  # 12 tokens: 3x4 on 8x8


# --- training a baseline: the method goes into the checkpoint's config ------------------------------------------

@pytest.mark.parametrize("values, message", [
    (dict(selection_method="uniform"), "phase phase1's budget"),  # phase1 trains at "auto"
    (dict(selection_method="hotspot", train_budget="heuristic"), "no learned budget"),
    (dict(selection_method="random", train_budget="16", eval_strategy="steps"), "eval_budget 'auto'"),
    (dict(selection_method="query_sim", train_budget="16"), "training-free"),
])
def test_a_fixed_compression_baseline_has_no_learned_budget(values, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        ArrCocTrainingArguments(output_dir=str(tmp_path), **values)


@pytest.mark.parametrize("values", [
    dict(selection_method="uniform", train_budget="16"),
    dict(selection_method="uniform", train_budget="random", eval_strategy="steps", eval_budget="16"),
    dict(selection_method="full"),  # phase1's "auto": ignored, every patch is kept
    dict(selection_method="learned", relevance_tag=False),  # the "no tag" ablation
])
def test_baseline_training_combinations_that_work(values, tmp_path):
    args = ArrCocTrainingArguments(output_dir=str(tmp_path), **values)
    assert {name: getattr(args, name) for name in values} == {k: str(v) if k.endswith("budget") else v
                                                              for k, v in values.items()}
    args.check_selection(args.selection_method)  # the trainer's check on the model's resolved selection passes too


def test_learning_curves_follow_the_models_own_selection():
    budgets = [4, 16, 100]
    assert [m.name for m in learning_curve_methods(budgets, selection="uniform")] == [
        "uniform_pool@4", "uniform_pool@16", "uniform_pool@100", "full"]
    assert [(m.name, m.selection) for m in learning_curve_methods(budgets, selection="full")] == [("full", "full")]
    assert learning_curve_methods(budgets, selection="learned")[0].name == "auto"


def test_trainer_refuses_arguments_not_written_into_the_model(tmp_path):
    model = ArrCocModelTester().get_model()
    args = ArrCocTrainingArguments(output_dir=str(tmp_path), selection_method="uniform", train_budget="16",
                                   report_to="none")
    apply_phase(model, "phase1")
    collator = ArrCocCollator(AutoProcessor.from_pretrained(TINY_PRESET), patch_size=8)
    with pytest.raises(ValueError, match="write it into the model config"):
        ArrCocTrainer(model=model, args=args, data_collator=collator)
    recipe.apply_method(model, args)
    ArrCocTrainer(model=model, args=args, data_collator=collator)


def test_train_main_writes_the_baselines_method_into_its_checkpoint(tmp_path, capsys):
    config = dict(model_preset="configs/model/tiny", config_overrides={"visual_vocab_size": max(NUM_VISUAL_WORDS, 64)},
                  synthetic_num_train=8, synthetic_num_validation=4, synthetic_cache_dir=str(tmp_path / "cache"),
                  synthetic_families=["local_color", "global_count"], phase="phase1", max_steps=2,
                  per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1, report_to="none",
                  disable_tqdm=True, dataloader_pin_memory=False, save_strategy="no", calibration_every=1,
                  learning_curve_every=2, learning_curve_samples=4, output_dir=str(tmp_path / "out"))
    path = tmp_path / "baseline.yaml"
    path.write_text(yaml.safe_dump(config))
    trainer = recipe.main([str(path), "selection_method=uniform", "relevance_tag=false", "train_budget=random"])
    assert "method: selection_method=uniform relevance_tag=False" in capsys.readouterr().out
    final = tmp_path / "out" / "checkpoint"
    saved = AutoConfig.from_pretrained(final)
    assert (saved.selection_method, saved.relevance_tag) == ("uniform", False)
    recorded = yaml.safe_load((final / TRAINING_CONFIG).read_text())
    assert recorded["selection_method"] == "uniform" and recorded["relevance_tag"] is False
    assert recorded["synthetic_families"] == ["local_color", "global_count"]
    assert not any("budget_loss" in h for h in trainer.state.log_history), "no budget to calibrate"
    curve = json.loads((tmp_path / "out" / "learning_curve.json").read_text())
    assert list(curve["points"][-1]["methods"]) == ["uniform_pool@4", "uniform_pool@16", "uniform_pool@100", "full"]


def test_train_main_grows_and_trains_the_compressor_of_a_learned_base(tmp_path, capsys):
    """`selection_method=compress` on a base without a compressor (every shipped base): the run builds one as uniform
    pooling, phase 1 trains it with the allocator, and the checkpoint carries it."""
    config = dict(model_preset="configs/model/tiny", config_overrides={"visual_vocab_size": max(NUM_VISUAL_WORDS, 64)},
                  synthetic_num_train=8, synthetic_num_validation=4, synthetic_cache_dir=str(tmp_path / "cache"),
                  synthetic_families=["local_color"], phase="phase1", max_steps=2, per_device_train_batch_size=4,
                  learning_rate=1e-2, logging_steps=1, report_to="none", disable_tqdm=True,
                  dataloader_pin_memory=False, save_strategy="no", output_dir=str(tmp_path / "out"))
    path = tmp_path / "compress.yaml"
    path.write_text(yaml.safe_dump(config))
    recipe.main([str(path), "selection_method=compress", "relevance_tag=false", "train_budget=4", "eval_budget=4"])
    assert "method: selection_method=compress relevance_tag=False" in capsys.readouterr().out
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out" / "checkpoint")
    compressor = loaded.model.allocator.compressor
    assert loaded.config.selection_method == "compress" and sorted(compressor.windows) == [4, 16]
    moved = [(merge.weight - merge.mean_weights()).abs().max() for merge in compressor.merges.values()]
    assert max(moved) > 1e-4, "phase 1 trained the compressor away from the mean"


def test_fold_dropped_from_the_run_is_written_into_the_model_and_its_checkpoint(tmp_path):
    """The demo's phases turn the fold off on a base trained with it (ARR-COC's default since the fold ablation)."""
    model = ArrCocModelTester().get_model()
    assert model.model.allocator.compression_heads.fold_dropped, "the tiny preset folds, as the demo base does"
    args = ArrCocTrainingArguments(output_dir=str(tmp_path), fold_dropped=False, report_to="none")
    assert "fold_dropped=False" in recipe.apply_method(model, args)
    heads = model.model.allocator.compression_heads
    assert not heads.fold_dropped, "the heads built before apply_method stop folding too"
    model.save_pretrained(tmp_path / "no_fold")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "no_fold")
    assert reloaded.config.fold_dropped is False and not reloaded.model.allocator.compression_heads.fold_dropped


# --- eval.py --method: trained baselines on the same questions, each at its own selection -----------------------


def save_checkpoint(path, training_config=None, **overrides):
    """The tiny preset (random weights) with `overrides` in its config, its processor, and optionally the training
    YAML train.py would have saved beside it."""
    config = AutoConfig.from_pretrained(TINY_PRESET, **overrides)
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config).save_pretrained(path)
    AutoProcessor.from_pretrained(TINY_PRESET).save_pretrained(path)
    if training_config is not None:
        (path / TRAINING_CONFIG).write_text(yaml.safe_dump(training_config))
    return str(path)


def test_eval_runs_trained_baselines_at_their_own_selection(tmp_path):
    main = save_checkpoint(tmp_path / "arrcoc", {"phase": "phase1", "synthetic_families": ["local_color"]})
    uniform = save_checkpoint(tmp_path / "uniform", {"selection_method": "uniform", "relevance_tag": False,
                                                     "train_budget": "random", "synthetic_families": ["local_color"]},
                              selection_method="uniform", relevance_tag=False)
    full = save_checkpoint(tmp_path / "full", selection_method="full", relevance_tag=False)
    compress = save_checkpoint(tmp_path / "compress", selection_method="compress", relevance_tag=False)
    argv = [main, "--num-samples", "4", "--batch-size", "4", "--max-new-tokens", "2", "--baselines",
            "query_sim,compressor", "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
            "--quiet", "--heatmaps-per-task", "1", "--method", f"uniform_pool={uniform}", "--method",
            f"reference={full}", "--method", f"compressor={compress}"]
    report = eval_script.main(argv)
    methods = report["methods"]
    # The learned compressor runs through its own checkpoint only; through ARR-COC's it is skipped, with the reason.
    assert (methods["trained_compressor@4"]["selection"], methods["trained_compressor@4"]["mean_visual_tokens"]) == (
        "compress", 4)
    assert "compressor@4" not in methods and "needs a checkpoint trained with" in report["skipped"]["compressor@4"]
    for k, tokens in ((4, 4), (16, 16), (100, 64)):
        trained = methods[f"trained_uniform_pool@{k}"]
        assert (trained["selection"], trained["budget"], trained["mean_visual_tokens"]) == ("uniform", k, tokens)
        assert trained["checkpoint"] == uniform and trained["trained_as"] == "uniform_pool"
        assert methods[f"trained_reference+query_sim@{k}"]["selection"] == "query_sim"
    reference = methods["trained_reference"]
    assert (reference["selection"], reference["mean_visual_tokens"]) == ("full", 64)
    record = report["trained_methods"]["uniform_pool"]
    assert (record["selection_method"], record["relevance_tag"]) == ("uniform", False)
    assert record["training_config"]["train_budget"] == "random" and record["trained_families"] == ["local_color"]
    assert report["trained_methods"]["reference"]["training_config"] is None, "no training YAML beside it"
    assert list(report["comparisons"]["auto_vs_trained_full"]) == ["trained_reference"]
    comparisons = report["comparisons"]
    compared = set(comparisons["auto_vs_baseline"]) | set(comparisons["baselines_with_fewer_tokens"])
    assert {f"trained_uniform_pool@{k}" for k in (4, 16, 100)} <= compared
    assert report["meta"]["trained_families"] == ["local_color"]
    assert report["unseen_families"] == sorted(set(row for row in methods["auto"]["per_task"]) - {"local_color"})

    # The report's answers are the uniform checkpoint's own, as its generate gives them without being told.
    model, processor = eval_script.load_checkpoint(uniform)
    data = E.load_eval_dataset("synthetic", num_samples=4, image_size=64, patch_size=8,
                               cache_dir=str(tmp_path / "cache"))
    rows = [data.dataset[i] for i in range(4)]
    inputs = prompt_batch(processor, [r["image"] for r in rows], [r["question"] for r in rows])
    generated = model.generate(**inputs, budget=16, max_new_tokens=2, do_sample=False,
                               pad_token_id=processor.tokenizer.pad_token_id)
    answers = processor.tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    lines = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [line["predictions"]["trained_uniform_pool@16"] for line in lines] == [a.strip() for a in answers]


def test_eval_refuses_a_trained_checkpoint_of_another_geometry(tmp_path):
    main = save_checkpoint(tmp_path / "arrcoc")
    other = save_checkpoint(tmp_path / "other", budgets=[4, 16])
    argv = [main, "--num-samples", "2", "--budget", "16", "--baselines", "none", "--no-calibration",
            "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet",
            "--method", f"small={other}"]
    with pytest.raises(ValueError, match="same pages and tiers"):
        eval_script.main(argv)
    with pytest.raises(SystemExit):
        eval_script.parse_args([main, "--method", "no-checkpoint"])


def test_trained_families_follow_the_chain_of_training_stages(tmp_path):
    """A checkpoint's stages: its own training_config.yaml, its init_from's, and a shipped base's PROVENANCE.json."""
    base, phase1, phase2 = tmp_path / "base", tmp_path / "phase1", tmp_path / "phase2"
    for path in (base, phase1, phase2):
        path.mkdir()
    stages = [{"training_config": yaml.safe_dump({"synthetic_families": ["local_color"], "init_from": "gone"})}]
    (base / "PROVENANCE.json").write_text(json.dumps({"stages": stages}))
    (phase1 / TRAINING_CONFIG).write_text(yaml.safe_dump({"init_from": str(base),
                                                                "synthetic_families": ["global_count"]}))
    (phase2 / TRAINING_CONFIG).write_text(yaml.safe_dump({"init_from": str(phase1)}))
    assert trained_families(phase1) == ["global_count", "local_color"]
    assert trained_families(phase2) == sorted(FAMILIES), "no synthetic_families: every family"
    assert trained_families(tmp_path / "nothing") is None, "not recorded: unknown"
    (phase1 / TRAINING_CONFIG).write_text(yaml.safe_dump({"init_from": str(tmp_path / "missing")}))
    assert trained_families(phase2) is None, "a link of the chain is not recorded"
    (phase1 / TRAINING_CONFIG).write_text(yaml.safe_dump({"dataset": "docvqa"}))
    assert trained_families(phase1) is None, "a Hub dataset's families are unknown here"
    given = tmp_path / "given.yaml"
    given.write_text(yaml.safe_dump({"init_from": str(base), "synthetic_families": ["chart"]}))
    assert trained_families(tmp_path / "nothing", [given]) == ["chart", "local_color"]


def test_a_learned_checkpoint_trained_at_one_tier_runs_there_as_its_own_method():
    """The constant-tier ablation's budget predictor never trains: its own run is the tier it was trained and
    validated at, not auto (then the report compares it once, its `@tier` run being the same)."""
    from modeling_arrcoc.methods import trained_methods, trained_own_budget

    budgets = [4, 8, 16]
    assert trained_own_budget({"train_budget": 8, "eval_budget": 8}, budgets) == 8
    for training in (None, {}, {"train_budget": "random", "eval_budget": 8}, {"train_budget": 8, "eval_budget": "auto"},
                     {"train_budget": 32, "eval_budget": 32}):
        assert trained_own_budget(training, budgets) == "auto", training
    own = trained_methods("constant", "learned", budgets, own_budget=8)[0]
    assert (own.name, own.budget, own.selection) == ("trained_constant", 8, "learned")
    assert [m.name for m in trained_methods("constant", "learned", budgets, own_budget=8)] == [
        "trained_constant", "trained_constant@4", "trained_constant@16"]  # tier 8 is not evaluated twice
    assert trained_methods("no_tag", "learned", budgets)[0].budget == "auto"
