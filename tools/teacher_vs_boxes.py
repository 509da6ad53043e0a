"""Teacher pseudo-labels vs true answer boxes for the alignment loss, measured on the synthetic suite with its boxes
hidden from training (issue #16).

    python -m tools.teacher_vs_boxes                       # ~25 min on 2 busy CPU cores
    python -m tools.teacher_vs_boxes --steps 40 --num-eval 32 --work-dir /tmp/tvb   # a quick smoke run

1. Teacher labels: the shipped base (`pretrained/demo-base`) at full tokens scores every patch of each training
   question (training/teacher.py, gradient x input of its answer loss); reported: how often its top-K patches cover
   the true answer box, per family and K = each tier. On the validation rows the same is measured for the
   alternatives: attention scoring, the teacher without the relevance tag (selection "full": the LLM's reading
   alone, no allocator score in its input), and the base's own allocator.
2. Students: phase 1 (allocator + quality adapter trainable, SAM / CLIP / LLM frozen, configs/demo/phase1.yaml's
   recipe) from the shipped base with its allocator RE-INITIALIZED (the base's allocator already learned the answer
   cells from boxes during `make pretrain`; a fresh one has to learn where to look from this run's targets), the
   same steps, batch, seed and rows for each `alignment_targets`: boxes, teacher, teacher without the relevance
   tag (`teacher_selection: full`), none (anti-collapse term only).
   Each student is scored on held-out validation rows: teacher-forced exact match and answer-box coverage (every
   box patch kept) at `auto` and each small tier, with 95% bootstrap intervals and paired differences
   (statistics.py).

Writes outputs/teacher_vs_boxes.json and outputs/teacher_vs_boxes.md (the tables docs/training.md's "Without answer boxes" quotes).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from modeling_arrcoc import ArrCocForConditionalGeneration
from modeling_arrcoc.data.collator import ArrCocCollator
from modeling_arrcoc.data.recipe import DataArguments, build_datasets
from modeling_arrcoc.modeling_arrcoc import answer_window
from modeling_arrcoc.provenance import git_commit, repo_path
from modeling_arrcoc.statistics import bootstrap_interval, paired_difference
from modeling_arrcoc.training.recipe import main as train_main
from modeling_arrcoc.training.teacher import add_teacher_targets, load_teacher, teacher_patch_scores

# Student runs: name -> (alignment_targets, teacher_selection). "teacher_no_tag": the same teacher at full tokens
# without its allocator's relevance tag in the LLM input (selection "full"), i.e. the LLM's reading alone.
CONDITIONS = {"boxes": ("boxes", None), "teacher": ("teacher", None), "teacher_no_tag": ("teacher", "full"),
              "none": ("none", None)}
FAMILIES = ("local_color", "local_key", "global_count")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="pretrained/demo-base")
    parser.add_argument("--config", default="configs/demo/phase1.yaml", help="The phase-1 recipe the students use.")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-eval", type=int, default=200, help="Held-out validation rows scored per student.")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--eval-tiers", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--keep-allocator", action="store_true",
                        help="Start from the base's trained allocator instead of a re-initialized one.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", default="outputs/teacher_vs_boxes")
    parser.add_argument("--output", default="outputs/teacher_vs_boxes.json")
    return parser.parse_args(argv)


# -- data ----------------------------------------------------------------------------------------------------------


def data_arguments(args, num_train):
    return DataArguments(synthetic_num_train=num_train, synthetic_num_validation=args.num_eval,
                         synthetic_families=list(args.families), synthetic_seed=0,
                         synthetic_cache_dir=str(Path(args.work_dir) / "synthetic"))


def batches(collator, dataset, size):
    for start in range(0, len(dataset), size):
        rows = [dataset[i] for i in range(start, min(start + size, len(dataset)))]
        yield rows, collator(rows)


def top_k_covered(scores, targets, k) -> list:
    """Per sample: are all patches touched by the answer box among the k highest scores (None: no box)."""
    inside = targets > 0
    kept = torch.zeros_like(inside)
    kept.scatter_(1, scores.topk(min(k, scores.shape[1]), -1).indices, True)
    full = ((kept & inside).sum(-1) == inside.sum(-1)).tolist()
    return [bool(f) if n else None for f, n in zip(full, inside.sum(-1).tolist())]


def coverage_table(scores, targets, tasks, tiers) -> dict:
    """{family or "all": {"n", "top_<K>": {"mean", "low", "high", "n"}}} of the top-K box coverage."""
    table = {}
    for family in sorted(set(tasks)) + ["all"]:
        rows = [i for i, task in enumerate(tasks) if family in ("all", task)]
        entry = {"n": len(rows)}
        for k in tiers:
            covered = [c for c in top_k_covered(scores[rows], targets[rows], k) if c is not None]
            entry[f"top_{k}"] = bootstrap_interval([float(c) for c in covered]) if covered else None
        table[family] = entry
    return table


# -- 1. teacher labels ---------------------------------------------------------------------------------------------


def teacher_label_coverage(args, labelled, validation, processor, config):
    """Coverage of the cached teacher labels on the training rows ({name: rows with their teacher_targets}), and of
    the alternatives on validation rows."""
    tiers = list(config.budgets)
    boxes = ArrCocCollator(processor, patch_size=config.vision_config.patch_size)
    result = {"teacher_labels_on_training_rows": {}}
    if labelled:
        train_rows = next(iter(labelled.values()))
        targets = torch.cat([batch["patch_targets"] for _, batch in batches(boxes, train_rows, 64)])
        result["teacher_labels_on_training_rows"] = {
            name: coverage_table(torch.tensor(rows["teacher_targets"]), targets, rows["task"], tiers)
            for name, rows in labelled.items()}

    variants = {"grad_input (as used)": ("grad_input", None), "attention": ("attention", None),
                "grad_input, no relevance tag": ("grad_input", "full")}
    scored = {name: [] for name in variants}
    scored["base allocator's own scores"] = []
    val_targets, val_tasks = [], []
    models = {scoring: load_teacher(repo_path(args.teacher), scoring)[0] for scoring in ("grad_input", "attention")}
    for rows, batch in batches(boxes, validation, args.batch_size):
        val_targets.append(batch["patch_targets"])
        val_tasks += [row["task"] for row in rows]
        for name, (scoring, selection) in variants.items():
            scored[name].append(teacher_patch_scores(models[scoring], batch, scoring, selection))
        with torch.no_grad():
            plan = models["grad_input"].plan_allocation(input_ids=batch["input_ids"],
                                                        attention_mask=batch["attention_mask"],
                                                        pixel_values=batch["pixel_values"], labels=batch["labels"])
        scored["base allocator's own scores"].append(plan.patch_scores)
    val_targets = torch.cat(val_targets)
    result["validation_rows"] = {name: coverage_table(torch.cat(values), val_targets, val_tasks, tiers)
                                 for name, values in scored.items()}
    return result


# -- 2. students ---------------------------------------------------------------------------------------------------


def fresh_allocator_base(args, path: Path):
    """The shipped base with a freshly initialized allocator (seeded), saved as a checkpoint to start from."""
    from transformers import AutoProcessor

    base = ArrCocForConditionalGeneration.from_pretrained(repo_path(args.teacher), dtype=torch.float32)
    torch.manual_seed(args.seed)
    fresh = ArrCocForConditionalGeneration(base.config)
    base.model.allocator.load_state_dict(fresh.model.allocator.state_dict())
    base.save_pretrained(path)
    AutoProcessor.from_pretrained(repo_path(args.teacher)).save_pretrained(path)
    return path


def train_student(args, condition, start, num_train):
    output = Path(args.work_dir) / condition
    targets, selection = CONDITIONS[condition]
    overrides = [
        f"init_from={start}", f"output_dir={output}", f"max_steps={args.steps}",
        f"per_device_train_batch_size={args.batch_size}", f"seed={args.seed}", f"alignment_targets={targets}",
        f"synthetic_num_train={num_train}", f"synthetic_num_validation={args.num_eval}",
        f"synthetic_families={json.dumps(list(args.families))}",
        f"synthetic_cache_dir={Path(args.work_dir) / 'synthetic'}", "eval_strategy=no", "save_strategy=no",
        "load_best_model_at_end=false", "early_stopping_patience=null", "learning_curve_every=0",
        "report_to=none", "disable_tqdm=true", f"warmup_steps={max(1, args.steps // 20)}",
        f"efficiency_warmup_steps={args.steps // 2}", "logging_steps=20",
    ]
    if targets == "teacher":
        overrides.append(f"teacher_checkpoint={repo_path(args.teacher)}")
    if selection is not None:
        overrides.append(f"teacher_selection={selection}")
    start_time = time.perf_counter()
    train_main([str(repo_path(args.config))] + overrides)
    return output / "checkpoint", time.perf_counter() - start_time


@torch.no_grad()
def score_student(checkpoint, validation, budgets, batch_size) -> dict:
    """Per sample, for each budget: teacher-forced exact match, box coverage, visual tokens."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    collator = ArrCocCollator(processor, patch_size=model.config.vision_config.patch_size)
    result = {str(b): {"exact": [], "covered": [], "tokens": []} for b in budgets}
    for rows, batch in batches(collator, validation, batch_size):
        features = model.model.get_patch_features(batch["pixel_values"])
        window = answer_window(batch["labels"])
        for budget in budgets:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        patch_features=features, labels=batch["labels"], budget=budget, logits_to_keep=window)
            labels = batch["labels"][:, -window:]
            predicted, target = out.logits.argmax(-1)[:, :-1], labels[:, 1:]
            answer = target != -100
            entry = result[str(budget)]
            entry["exact"] += [float((predicted[b][answer[b]] == target[b][answer[b]]).all()) for b in
                               range(len(rows))]
            inside = batch["patch_targets"] > 0
            kept = out.kept_patch_mask
            entry["covered"] += [float(((kept[b] & inside[b]).sum() == inside[b].sum()).item()) for b in
                                 range(len(rows))]
            entry["tokens"] += out.visual_token_counts.tolist()
    return result


def summarize_students(per_sample: dict, tasks: list, seed: int) -> dict:
    summary = {}
    for condition, budgets in per_sample.items():
        summary[condition] = {}
        for budget, values in budgets.items():
            entry = {"accuracy": bootstrap_interval(values["exact"], seed=seed),
                     "coverage": bootstrap_interval(values["covered"], seed=seed),
                     "mean_visual_tokens": sum(values["tokens"]) / len(values["tokens"]), "per_family": {}}
            for family in sorted(set(tasks)):
                rows = [i for i, t in enumerate(tasks) if t == family]
                entry["per_family"][family] = {
                    "accuracy": sum(values["exact"][i] for i in rows) / len(rows),
                    "coverage": sum(values["covered"][i] for i in rows) / len(rows), "n": len(rows)}
            summary[condition][budget] = entry
    return summary


def paired(per_sample: dict, seed: int) -> dict:
    pairs = [(a, b) for a, b in (("teacher", "boxes"), ("teacher", "none"), ("boxes", "none"),
                                 ("teacher_no_tag", "none"), ("teacher", "teacher_no_tag"))
             if a in per_sample and b in per_sample]
    result = {}
    for a, b in pairs:
        for budget in per_sample[a]:
            for key in ("exact", "covered"):
                name = f"{a} - {b}, {'accuracy' if key == 'exact' else 'coverage'} at {budget}"
                result[name] = paired_difference(per_sample[a][budget][key], per_sample[b][budget][key], seed=seed)
    return result


# -- report --------------------------------------------------------------------------------------------------------


def interval(entry, digits=2) -> str:
    if entry is None:
        return "-"
    return f"{entry['mean']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def markdown(record: dict) -> str:
    meta = record["meta"]
    tiers = meta["tiers"]
    lines = [f"`{meta['command']}` ({meta['minutes']:.0f} min, commit `{meta['commit']}`). Teacher: "
             f"`{meta['teacher']}` at full tokens, gradient x input; its top-K patches cover the true answer box "
             "(share of questions, 95% bootstrap interval):", "",
             "| labels | rows | family | n | " + " | ".join(f"top-{k}" for k in tiers) + " |",
             "|---|---|---|---|" + "---|" * len(tiers)]
    teacher = record["teacher_labels"]
    for name, table in teacher["teacher_labels_on_training_rows"].items():
        for family, entry in table.items():
            lines.append(f"| {name} labels (as trained on) | train | {family} | {entry['n']} | "
                         + " | ".join(interval(entry.get(f"top_{k}")) for k in tiers) + " |")
    for name, table in teacher["validation_rows"].items():
        entry = table["all"]
        lines.append(f"| {name} | validation | all | {entry['n']} | "
                     + " | ".join(interval(entry.get(f"top_{k}")) for k in tiers) + " |")
    start = "a re-initialized allocator" if meta["fresh_allocator"] else "the base's allocator"
    lines += ["", f"Students: phase 1 from the base with {start}, {meta['steps']} steps x batch {meta['batch_size']}, "
              f"seed {meta['seed']}, the same rows; scored on {meta['num_eval']} held-out validation rows "
              "(teacher-forced exact match; coverage = every answer-box patch kept):", ""]
    budgets = list(next(iter(record["students"].values())))
    header = [f"{kind} {b if b == 'auto' else 'tier ' + b}" for b in budgets for kind in ("accuracy", "coverage")]
    lines += ["| alignment targets | " + " | ".join(header) + " | auto: mean tokens |",
              "|---|" + "---|" * (len(header) + 1)]
    for condition, budgets_entry in record["students"].items():
        cells = [interval(budgets_entry[b][key]) for b in budgets for key in ("accuracy", "coverage")]
        lines.append(f"| {condition} | " + " | ".join(cells) +
                     f" | {budgets_entry['auto']['mean_visual_tokens']:.1f} |")
    if record["paired"]:
        lines += ["", "Paired differences (same questions), 95% bootstrap interval:", ""]
        for name, entry in record["paired"].items():
            if name.endswith(("at auto", "at 8")):
                lines.append(f"- {name}: {entry['difference']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    begin = time.perf_counter()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model, processor = load_teacher(repo_path(args.teacher))
    config = model.config
    num_train = args.steps * args.batch_size  # each training row seen once
    train_rows, validation = build_datasets(data_arguments(args, num_train), config)
    # Each teacher condition's run (output_dir work/<condition>) reads these cached scores back.
    labelled = {condition: add_teacher_targets(train_rows, repo_path(args.teacher), config.grid_size,
                                               work / condition / "teacher_targets", selection=selection,
                                               batch_size=args.batch_size, progress=True)
                for condition, (targets, selection) in CONDITIONS.items()
                if targets == "teacher" and condition in args.conditions}
    del model
    print("teacher labels: coverage of the true boxes", flush=True)
    labels = teacher_label_coverage(args, labelled, validation, processor, config)

    start = fresh_allocator_base(args, work / "start") if not args.keep_allocator else repo_path(args.teacher)
    budgets = ["auto"] + args.eval_tiers
    per_sample = {"start (step 0)": score_student(start, validation, budgets, args.batch_size)}
    seconds = {}
    for condition in args.conditions:
        checkpoint, seconds[condition] = train_student(args, condition, start, num_train)
        per_sample[condition] = score_student(checkpoint, validation, budgets, args.batch_size)
        print(f"{condition}: trained in {seconds[condition]:.0f} s", flush=True)
    tasks = list(validation["task"])
    students = summarize_students(per_sample, tasks, args.seed)
    record = {
        "meta": {"command": " ".join(["python -m tools.teacher_vs_boxes"] + (sys.argv[1:] if argv is None else argv)),
                 "commit": git_commit(), "teacher": args.teacher, "scoring": "grad_input", "steps": args.steps,
                 "batch_size": args.batch_size, "num_train": num_train, "num_eval": len(validation),
                 "families": list(args.families), "seed": args.seed, "fresh_allocator": not args.keep_allocator,
                 "tiers": list(config.budgets), "train_seconds": seconds,
                 "minutes": (time.perf_counter() - begin) / 60, "threads": args.threads},
        "teacher_labels": labels,
        "students": students,
        "paired": paired({k: v for k, v in per_sample.items() if k in CONDITIONS}, args.seed),
    }
    output = repo_path(args.output) if not Path(args.output).is_absolute() else Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1))
    table = markdown(record)
    output.with_suffix(".md").write_text(table)
    print(table)
    return record


if __name__ == "__main__":
    main()
