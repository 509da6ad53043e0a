"""Tests for modeling_arrcoc/evaluation/seeds.py: the comparison across training seeds, read from eval.py's
eval.json and predictions.jsonl (written here in that form)."""

import json

import numpy as np
import pytest

from modeling_arrcoc.evaluation.seeds import load_run, seed_study, seed_table


def _write_run(folder, auto, reference, tiers, questions=None, price=0.1):
    """One eval.py output folder: `auto`, `reference` and each tier's correctness per question (1 = right)."""
    folder.mkdir(parents=True)
    questions = questions or [f"q{i}" for i in range(len(auto))]
    rows, methods = [], {}
    scored = {"auto": auto, "trained_full": reference, **{f"tier_{k}": v for k, v in tiers.items()}}
    for i, question in enumerate(questions):
        rows.append({"index": i, "task": "local_key", "question": question, "answers": ["7"],
                     "predictions": {name: "7" if right[i] else "3" for name, right in scored.items()}})
    for name, right in scored.items():
        tokens = {"auto": 8.0, "trained_full": 256.0}.get(name) or float(name[5:])  # tier_K spends K
        methods[name] = {"accuracy": float(np.mean(right)), "mean_visual_tokens": tokens}
    methods["auto"]["budget_cost"] = price
    report = {"meta": {"metric": "exact_match", "seed": 0}, "methods": methods,
              "frontier": {"difference": 0.02, "low": 0.0, "high": 0.04}}
    (folder / "eval.json").write_text(json.dumps(report))
    (folder / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_seed_study_reports_each_seed_the_spread_and_the_seed_averaged_difference(tmp_path):
    rng = np.random.default_rng(0)
    runs = {}
    for seed, (p_auto, p_ref) in enumerate([(0.8, 0.9), (0.85, 0.9), (0.75, 0.85)]):
        auto, ref = (rng.random(400) < p_auto).astype(int), (rng.random(400) < p_ref).astype(int)
        runs[seed] = load_run(_write_run(tmp_path / str(seed), auto, ref, {4: auto, 64: ref}))
    study = seed_study(runs)
    per_seed = study["per_seed"]
    assert [row["seed"] for row in per_seed] == [0, 1, 2] and all(row["n"] == 400 for row in per_seed)
    for row in per_seed:  # each seed's paired difference is its own two methods' accuracy gap, inside its interval
        assert row["difference"] == pytest.approx(row["accuracy"] - row["reference_accuracy"])
        assert row["low"] <= row["difference"] <= row["high"]
    across = study["across"]["difference"]
    differences = [row["difference"] for row in per_seed]
    assert across["mean"] == pytest.approx(np.mean(differences)) and across["n"] == 3
    assert across["low"] < min(differences) and across["high"] > max(differences)  # t at 2 df is wide
    assert set(study["across"]["tiers"]) == {"tier_4", "tier_64"}
    pooled = study["pooled"]
    assert pooled["difference"] == pytest.approx(np.mean(differences)) and pooled["seeds"] == 3
    assert pooled["low"] < pooled["difference"] < pooled["high"] < 0  # auto is below the reference here


def test_seed_study_refuses_runs_on_other_questions(tmp_path):
    ones = np.ones(10, dtype=int)
    first = load_run(_write_run(tmp_path / "a", ones, ones, {4: ones}))
    other = load_run(_write_run(tmp_path / "b", ones, ones, {4: ones}, questions=[f"x{i}" for i in range(10)]))
    with pytest.raises(ValueError, match="other questions"):
        seed_study({0: first, 1: other})
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_study({0: first})


def test_seed_study_names_a_method_the_run_lacks(tmp_path):
    ones = np.ones(10, dtype=int)
    runs = {seed: load_run(_write_run(tmp_path / str(seed), ones, ones, {4: ones})) for seed in (0, 1)}
    with pytest.raises(ValueError, match="no method 'trained_uniform'"):
        seed_study(runs, reference="trained_uniform")


def test_seed_table_shows_every_seed_and_the_spread(tmp_path):
    rng = np.random.default_rng(1)
    runs = {}
    for seed in (0, 3):
        auto, ref = (rng.random(50) < 0.7).astype(int), (rng.random(50) < 0.9).astype(int)
        runs[seed] = load_run(_write_run(tmp_path / str(seed), auto, ref, {4: auto}, price=0.12))
    study = seed_study(runs)
    lines = seed_table(study)
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| 0", "| 3", "| mean of 2 seeds"]
    row = study["per_seed"][1]
    assert f"| 3 | {row['accuracy']:.3f} | 8.0 (0.12) | {row['reference_accuracy']:.3f} | " in lines[3]
    pooled = study["pooled"]
    assert f"difference {100 * pooled['difference']:+.1f} [" in lines[-1] and "over 50 questions" in lines[-1]


def test_seed_table_names_a_seed_where_a_larger_tier_scores_below_a_smaller(tmp_path):
    ones, worse = np.ones(200, dtype=int), np.r_[np.zeros(30, dtype=int), np.ones(170, dtype=int)]
    # Tier 16 is written before tier 4: the check orders budgets by their tokens, not by the report's order.
    runs = {0: load_run(_write_run(tmp_path / "0", ones, ones, {16: ones, 4: ones})),
            1: load_run(_write_run(tmp_path / "1", ones, ones, {16: worse, 4: ones}))}
    study = seed_study(runs)
    assert study["per_seed"][0]["more_tokens"]["hurts"] == []
    hurts = study["per_seed"][1]["more_tokens"]["hurts"]
    assert [(p["smaller"], p["larger"]) for p in hurts] == [("tier_4", "tier_16")]
    assert hurts[0]["difference"] == pytest.approx(-0.15)
    lines = seed_table(study)
    assert lines[-2].startswith("- Seed 0: More tokens") and "no pair below 0" in lines[-2]
    assert lines[-1].startswith("- Seed 1: More tokens") and "(tier_16 minus tier_4 -15.0 points [" in lines[-1]
