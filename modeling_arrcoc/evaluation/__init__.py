"""Evaluation: accuracy, measured visual tokens, latency and budget calibration of ARR-COC, of fixed-budget
baselines run through the same checkpoint (a diagnostic: that checkpoint's LLM reads ARR-COC's relevance tag), and
of baselines trained with their own selection (the fair comparison), with intervals and paired comparisons.

Methods (names as they appear in the report):

- ``auto``: the allocator picks the tier and the patches (what a user gets by default).
- ``tier_<K>``: the tier of value K forced (K in ``config.budgets``), learned patch selection.
- ``full``: every patch.
- ``uniform_pool@K``: DeepSeek-OCR-style fixed compression, the grid average-pooled to K cells (selection
  "uniform"), whatever the question.
- ``saliency_topk@K``: the top-K patches by the allocator's query-independent hotspot saliency ("hotspot"),
  like VisionZip.
- ``random@K``: K random patches ("random"), seeded.
- ``query_sim@K``: training-free query similarity (SparseVLM-style): every patch is turned into an LLM-space
  embedding (the "full" path), scored by cosine similarity with the mean embedding of the question's tokens,
  and the top-K are kept (see `query_similarity_scores`).
- ``trained_<name>[@K]``: the methods of another trained checkpoint (eval.py ``--method name=CHECKPOINT``) at its
  own selection (``config.selection_method``, see `methods.trained_methods`): ``trained_<name>@K`` for a
  fixed-compression baseline (uniform, hotspot, random) at each tier, ``trained_<name>`` for a full-token model,
  ``trained_<name>+query_sim@K`` for query similarity on that full-token model (training-free, so never trained
  itself), ``trained_<name>`` (auto) and ``trained_<name>@K`` for an ARR-COC-like checkpoint (e.g. an ablation).

Tokens are always measured: every count in the report is the model's ``visual_token_counts`` for the inputs it
generated from, never a tier value from the config (a tier larger than the grid keeps every patch, and the
report says so). ``auto`` batches are split by the tier the allocator chose, so a 64-token sample is not padded
to a 400-token one. SAM runs once per batch and is shared by every method; its time is added to each method's
latency, since every query pays for it.

Budget calibration: each sample's oracle tier is the smallest tier whose forced run (``tier_<K>``) answers it
correctly (metric score >= ``correct_threshold``), None when no tier does; ``auto``'s chosen tier is compared
with it by `metrics.calibration_stats`. Calibration therefore runs every tier (they are reported as methods).
The stable tier (``policies.need``) is the smallest tier from which every larger tier answers: the oracle-minimal
tier counts a guess that a small tier happens to get right, the stable tier does not.

Report (``eval.json``; all keys are strings, numbers plain JSON numbers, fractions in [0, 1])::

    {
      "methods": {
        "<method>": {
          "accuracy": float,              # mean metric score (the dataset's main metric, see meta.metric)
          "mean_visual_tokens": float,    # measured tokens per query
          "p50_visual_tokens": float,
          "p95_visual_tokens": float,
          "per_task": {"<task family>": float},   # accuracy per `task` column value
          "per_task_visual_tokens": {"<task family>": float},  # mean measured tokens per task family
          "token_histogram": {"<tokens>": int},   # samples per measured token count
          "tier_histogram": {"<tier value>": int},# samples per tier used ("full" counts as the largest tier)
          "latency_ms_per_query": float,  # wall time per query, SAM + selection + generation, batched
          "compression_ratio": float,     # grid patches / mean_visual_tokens
          "budget": "auto" | "full" | int,# the budget asked for (a tier value)
          "budget_cost": float,           # auto runs only: the token price it ran at ("auto": the model's own;
                                          # null only for a run built by hand, not by the runner)
          "selection": str,               # "learned", "uniform", "hotspot", "random", "full" or "query_sim"
          "num_samples": int,
          "interval": [low, high], "n": int,      # 95% percentile bootstrap interval of accuracy (statistics.py)
          "per_task_interval": {"<task family>": [low, high]}, "per_task_n": {"<task family>": int},
          "checkpoint": str, "trained_as": str    # trained_* methods only: their checkpoint and --method name
        }
      },
      "trained_methods": {"<name>": {"checkpoint", "selection_method", "relevance_tag", "fold_dropped",
                                     "training_config": {...} | null,   # its training_config.yaml (train.py)
                                     "trained_families": [str] | null, "methods": [str]}},
      "comparisons": {                    # paired differences auto - other on the same questions, null without auto
        "auto_vs_ablation": {"<method>": {... as below}},  # trained learned-selection models: at their auto and
                                                           # at the tier nearest auto's mean tokens
        "auto_curve_vs_ablation": {"<method>": {... as below, "auto_point": str}},  # auto_point - the ablation's
                                                           # own run; auto_point: the priced auto nearest its tokens
        "auto_vs_tier": {"tier_<K>": {"difference", "low", "high", "n", "accuracy": [auto, other],
                                      "mean_visual_tokens": [auto, other]}},
        "auto_vs_baseline": {"<method>": {... as above, "trained": bool}},  # baselines with >= auto's mean tokens
        "baselines_with_fewer_tokens": [str],                              # listed, not compared
        "auto_vs_trained_full": {"<method>": {... as above, "method": "auto", "accuracy_kept": float | null,
                                              "token_share": float}},  # null: the reference scores 0
        "auto_curve_vs_trained_full": {"<method>": [{... as auto_vs_trained_full, "method": "auto" | "auto(cost=C)"}]}
                                          # every point of auto's price curve, by mean tokens; accuracy and
                                          # mean_visual_tokens are [that point, the reference]
      },
      "policies": {"constant": [{"tier", "budget", "accuracy", "mean_tokens", "n"}], "best_constant": {...},
                   "oracle": {"accuracy", "mean_tokens", "n", "n_no_oracle"}, "auto": {"accuracy", "mean_tokens", "n"},
                   "calibration": {"exact", "constant_tier", "constant_exact", "difference", "low", "high", "n",
                                   "n_no_oracle"},
                   "need": {"oracle_minimal" | "stable": {"<task family>": {"mean", "low", "high", "n"}},  # tokens
                            "spent": {"auto" | "auto(cost=C)": {"<task family>": {...}}},  # each priced run's,
                                                  # on the questions with a stable tier (as "stable")
                            "calibration_stable": {"auto" | "auto(cost=C)": {... as calibration, "over", "under"}}},
                                                  # stable tier: the smallest from which every larger tier answers;
                                                  # n_no_oracle here: questions the largest tier misses
                   "family_router": {"tiers": {"<task family>": int}, "accuracy", "mean_tokens", "n",
                                     "minus_envelope": {"difference", "low", "high", "frontier_accuracy"},
                                     "auto_minus_it": {"difference", "low", "high", "n"}}} | null,
                                                                           # null unless auto and every tier ran
      "more_tokens": {"pairs": [{"smaller", "larger", "difference", "low", "high", "n"}],  # larger - smaller,
                      "hurts": [... pairs with high < 0], "worst": {... the lowest difference}} | null,
                                          # every pair of ARR-COC's forced budgets (tier_K, full), by mean
                                          # tokens; full beside a tier with the same tokens is that tier
      "frontier": {"difference", "low", "high", "n", "lower_tier", "upper_tier", "weight", "auto_mean_tokens",
                   "frontier_accuracy", "extrapolated"} | null,  # auto - constant tiers' envelope at auto's tokens
      "auto_curve": [{"method", "budget_cost", "accuracy", ... as frontier}] | null,  # auto at each token price
      "chance": {"overall": {...}, "per_task": {"<task family>": {"majority", "uniform", "majority_answer", "n",
                                                                 "n_distinct"}}},
      "unseen_families": [str] | null,    # evaluated families with no training rows (null: training not recorded)
      "calibration": {"exact", "within_one", "over", "under": float | null, "n": int, "n_no_oracle": int} | null,
      "per_tier": {
        "<tier value>": {
          "tier": int,                    # tier index
          "n_predicted": int,             # samples `auto` put in this tier
          "accuracy": float | null,       # `auto` accuracy on those samples
          "mean_visual_tokens": float | null,
          "n_oracle": int | null,         # samples whose oracle tier this is (null without calibration)
          "forced_accuracy": float | null # accuracy of tier_<K> on every sample (null if not run)
        }
      },
      "skipped": {"<method>": "reason"},  # methods that cannot run on this checkpoint (e.g. pooling shape)
      "meta": {
        "checkpoint", "dataset", "dataset_source", "split": str, "num_samples": int,
        "commit": str | null,             # git rev-parse HEAD of the evaluating code
        "created": str,                   # ISO 8601, UTC
        "metric": str, "correct_threshold": float, "budgets": [int], "fold_dropped": bool, "grid_size": [rows, cols],
        "num_patches": int, "batch_size": int, "max_new_tokens": int, "seed": int, "device": str,
        "trained_families": [str] | null, # eval.py: from the training YAMLs behind the checkpoint
        "vision_autocast_dtype": str | null  # SAM's autocast dtype (config.vision_autocast_dtype), null: none
      }
    }

Layout: `methods` (the method vocabulary; each selection, the query-similarity baseline's scorer included, is an
entry of the library's `selection` table), `runner` (running methods over a dataset; `evaluate`), `report` (scores,
calibration, per-tier buckets, predictions), `datasets` (and the families a checkpoint was trained on), `figures`,
`model_card`, `readme` (the generated blocks of the markdown pages), `seeds` (the comparison across training seeds),
`agreement` (two runs of the same questions, answer by answer).
"""

from ..methods import (
    BASELINE_SELECTIONS, BASELINES, CORRECT_THRESHOLD, QUERY_SIM, SYNTHETIC, SYNTHETIC_METRIC, Method,
    learning_curve_methods, method_names, parse_method, tier_value, trained_methods, unsupported_reason,
)
from .datasets import EvalData, load_eval_dataset, trained_families
from .figures import heatmap_rows, plot_heatmaps, plot_pareto
from .report import (
    MethodRun, build_report, column, format_table, git_commit, per_tier_buckets, sample_scores,
    save_report, summarize_run, write_predictions,
)
from .runner import (
    EvalBatch, TrainedCheckpoint, eval_batch, evaluate, external_selections, method_plan, run_batch, run_methods,
)
from ..selection import query_similarity_scores
from ..statistics import oracle_tiers

__all__ = [
    "BASELINES",
    "BASELINE_SELECTIONS",
    "CORRECT_THRESHOLD",
    "EvalBatch",
    "EvalData",
    "Method",
    "MethodRun",
    "QUERY_SIM",
    "SYNTHETIC",
    "SYNTHETIC_METRIC",
    "TrainedCheckpoint",
    "build_report",
    "column",
    "eval_batch",
    "evaluate",
    "external_selections",
    "format_table",
    "git_commit",
    "heatmap_rows",
    "learning_curve_methods",
    "load_eval_dataset",
    "method_names",
    "method_plan",
    "oracle_tiers",
    "parse_method",
    "per_tier_buckets",
    "plot_heatmaps",
    "plot_pareto",
    "query_similarity_scores",
    "run_batch",
    "run_methods",
    "sample_scores",
    "save_report",
    "summarize_run",
    "tier_value",
    "trained_families",
    "trained_methods",
    "unsupported_reason",
    "write_predictions",
]
