"""The Hub path end to end, offline: local copies of DocVQA, ChartQA and VQAv2 in each repo's real schema and storage
form (parquet shards laid out as the Hub serves them, images as {bytes, path} structs), built from synthetic pages;
train.py trains the tiny preset on each for a few steps and eval.py scores it with the dataset's own metric.
Streaming, a weighted mixture of sources and teacher pseudo-labels (no boxes in any of these sets) run the same way.
"""

import io
import json
import shutil

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from transformers import AutoConfig

import eval as eval_script  # its main is what these tests run, as `python eval.py` would
from conftest import TINY_PRESET
from modeling_arrcoc.data.hub import COMMON_FEATURES, load_hub_dataset
from modeling_arrcoc.data.mixture import parse_mixture
from modeling_arrcoc.data.synthetic import make_synthetic_suite
from modeling_arrcoc.training import recipe

NUM_ROWS = 12
METRICS = {"docvqa": "anls", "chartqa": "relaxed_accuracy", "vqav2": "vqa_accuracy"}
# (split trained on, split evaluated: the adapter's default) per dataset, as the Hub repos publish them.
SPLITS = {"docvqa": ("validation", "validation"), "chartqa": ("train", "test"), "vqav2": ("validation", "validation")}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Synthetic pages with their questions and answers (64 px, the tiny preset's geometry)."""
    suite = make_synthetic_suite(image_size=64, patch_size=8, num_train=NUM_ROWS, num_validation=1, num_test=1,
                                 families=("local_color", "global_count"),
                                 cache_dir=str(tmp_path_factory.mktemp("pages")))
    return [suite["train"][i] for i in range(NUM_ROWS)]


def _png(image, size=None) -> bytes:
    buffer = io.BytesIO()
    (image.resize(size) if size else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _docvqa_rows(pages, config):
    return [{"questionId": str(1000 + i), "question": f"{page['question']} ({config})",
             "question_types": ["layout"], "image": {"bytes": _png(page["image"]), "path": f"{i}.png"},
             "docId": i, "ucsf_document_id": f"doc{i}", "ucsf_document_page_no": "1",
             "answers": [page["answers"][0], page["answers"][0] + " "], "data_split": "val"}
            for i, page in enumerate(pages)]


DOCVQA_FEATURES = datasets.Features({
    "questionId": datasets.Value("string"), "question": datasets.Value("string"),
    "question_types": datasets.List(datasets.Value("string")), "image": datasets.Image(),
    "docId": datasets.Value("int64"), "ucsf_document_id": datasets.Value("string"),
    "ucsf_document_page_no": datasets.Value("string"), "answers": datasets.List(datasets.Value("string")),
    "data_split": datasets.Value("string"),
})
DOCVQA_README = """---
configs:
- config_name: DocVQA
  data_files:
  - split: validation
    path: DocVQA/validation-*
- config_name: InfographicVQA
  data_files:
  - split: validation
    path: InfographicVQA/validation-*
---
"""
VQAV2_FEATURES = datasets.Features({
    "question_type": datasets.Value("string"), "multiple_choice_answer": datasets.Value("string"),
    "answers": datasets.List({"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
                              "answer_id": datasets.Value("int64")}),
    "image_id": datasets.Value("int64"), "answer_type": datasets.Value("string"),
    "question_id": datasets.Value("int64"), "question": datasets.Value("string"), "image": datasets.Image(),
})


def _write_docvqa(root, pages):
    """lmms-lab/DocVQA: one folder per config (DocVQA, InfographicVQA) of <split>-0000i-of-0000n.parquet shards
    (written by datasets, so the schema metadata marks `image` as an Image feature) and the README's configs."""
    for config in ("DocVQA", "InfographicVQA"):
        table = datasets.Dataset.from_list(_docvqa_rows(pages, config), features=DOCVQA_FEATURES)
        (root / config).mkdir(parents=True)
        for shard in range(2):
            table.shard(2, shard, contiguous=True).to_parquet(
                str(root / config / f"validation-{shard:05d}-of-00002.parquet"))
    (root / "README.md").write_text(DOCVQA_README)


def _write_chartqa(root, pages):
    """HuggingFaceM4/ChartQA: data/{train,val,test}-00000-of-00001-<hash>.parquet with image, query, label,
    human_or_machine; written with pyarrow alone (no datasets metadata): the image is a bare {bytes, path} struct."""
    (root / "data").mkdir(parents=True)
    for split, rows in (("train", pages), ("val", pages[:4]), ("test", pages)):
        table = pa.table({
            "image": pa.array([{"bytes": _png(p["image"], (96, 64)), "path": None} for p in rows],
                              pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "query": [p["question"] for p in rows],
            "label": [[p["answers"][0]] for p in rows],
            "human_or_machine": pa.array([i % 2 for i in range(len(rows))], pa.int64()),
        })
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001-5a8b1c2d.parquet")


def _write_vqav2(root, pages):
    """lmms-lab/VQAv2: data/validation-0000i-of-0000n.parquet; answers are 10 {answer, answer_confidence,
    answer_id} records."""
    rows = [{"question_type": "what", "multiple_choice_answer": p["answers"][0],
             "answers": [{"answer": p["answers"][0] if j < 7 else "other", "answer_confidence": "yes",
                          "answer_id": j + 1} for j in range(10)],
             "image_id": i, "answer_type": "number", "question_id": 100 * i, "question": p["question"],
             "image": {"bytes": _png(p["image"]), "path": None}} for i, p in enumerate(pages)]
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows, features=VQAV2_FEATURES).to_parquet(
        str(root / "data" / "validation-00000-of-00001.parquet"))


@pytest.fixture(scope="module")
def hub_dirs(tmp_path_factory, pages):
    root = tmp_path_factory.mktemp("hub")
    writers = {"docvqa": _write_docvqa, "chartqa": _write_chartqa, "vqav2": _write_vqav2}
    for name, write in writers.items():
        write(root / name, pages)
    return {name: str(root / name) for name in writers}


def tiny_yaml(path, **values) -> str:
    config = dict(model_preset="configs/model/tiny", phase="phase1", max_steps=2, per_device_train_batch_size=4,
                  per_device_eval_batch_size=4, learning_rate=1e-3, logging_steps=1, report_to="none",
                  disable_tqdm=True, dataloader_pin_memory=False, save_strategy="no", calibration_every=0,
                  output_dir=str(path.parent / "out"))
    config.update(values)
    path.write_text(yaml.safe_dump(config))
    return str(path)


def evaluate(checkpoint, output_dir, *options):
    eval_script.main([str(checkpoint), "--budget", "16", "--no-calibration", "--num-samples", "8", "--baselines",
                      "none", "--batch-size", "4", "--max-new-tokens", "4", "--heatmaps-per-task", "1", "--quiet",
                      "--output-dir", str(output_dir), *options])
    return json.loads((output_dir / "eval.json").read_text())


def test_a_local_repo_with_several_configs_reads_one(hub_dirs):
    docvqa, infovqa = (load_hub_dataset(name, path=hub_dirs["docvqa"]) for name in ("docvqa", "infovqa"))
    assert len(docvqa) == len(infovqa) == NUM_ROWS  # each config's two shards, never the other config's
    assert all(q.endswith("(DocVQA)") for q in docvqa["question"])
    assert all(q.endswith("(InfographicVQA)") for q in infovqa["question"])


def test_a_local_copy_whose_files_changed_is_read_again_not_from_the_cache(pages, tmp_path):
    # The same folder name and config as a copy read before (datasets caches a README config by its name).
    _write_docvqa(tmp_path / "docvqa", pages)
    first = load_hub_dataset("docvqa", path=str(tmp_path / "docvqa"))
    shutil.rmtree(tmp_path / "docvqa")
    _write_docvqa(tmp_path / "docvqa", pages[::-1])
    second = load_hub_dataset("docvqa", path=str(tmp_path / "docvqa"))
    assert [r["answers"][0] for r in first] == [p["answers"][0] for p in pages]
    assert [r["question"] for r in second] == [r["question"] for r in first][::-1]


@pytest.mark.parametrize("name", sorted(METRICS))
def test_train_and_evaluate_on_a_local_hub_copy(name, hub_dirs, pages, tmp_path):
    train_split, eval_split = SPLITS[name]
    rows = load_hub_dataset(name, split=eval_split, path=hub_dirs[name])
    assert rows.features == COMMON_FEATURES and len(rows) == NUM_ROWS
    assert isinstance(rows[0]["image"], Image.Image) and rows[0]["answers"][0] == pages[0]["answers"][0]
    assert rows[0]["boxes"] == [] and rows[0]["task"] == name

    trainer = recipe.main([tiny_yaml(tmp_path / "run.yaml"), f"dataset={name}", f"dataset_path={hub_dirs[name]}",
                          f"train_split={train_split}"])
    assert trainer.state.global_step == 2
    report = evaluate(tmp_path / "out" / "checkpoint", tmp_path / "eval", "--dataset", name, "--dataset-path",
                      hub_dirs[name])
    assert report["meta"]["metric"] == METRICS[name] and report["meta"]["split"] == eval_split
    assert report["meta"]["num_samples"] == 8
    assert 0.0 <= report["methods"]["tier_16"]["accuracy"] <= 1.0
    assert report["methods"]["tier_16"]["mean_visual_tokens"] == 16


def test_streaming_a_local_copy_trains(hub_dirs, tmp_path):
    stream = load_hub_dataset("chartqa", split="train", path=hub_dirs["chartqa"], streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    first = next(iter(stream))
    assert set(first) == set(COMMON_FEATURES) and first["image"].size == (96, 64) and first["task"] == "chartqa"

    config = tiny_yaml(tmp_path / "stream.yaml", dataset="chartqa", dataset_path=hub_dirs["chartqa"], streaming=True)
    with pytest.raises(ValueError, match="max_steps"):
        recipe.main([config, "max_steps=-1", "num_train_epochs=1"])
    with pytest.raises(ValueError, match="cache_sam_features"):
        recipe.main([config, "cache_sam_features=true"])
    trainer = recipe.main([config, "max_steps=4"])  # 4 steps x 4 rows > 12 rows: the stream is read again
    assert trainer.state.global_step == 4 and not hasattr(trainer.train_dataset, "__len__")


def test_mixture_with_teacher_targets_trains_and_each_source_keeps_its_metric(hub_dirs, tmp_path):
    """A weighted mixture of the three sources, none with answer boxes, trained with teacher pseudo-labels (the
    teacher: a tiny checkpoint trained first on DocVQA), then evaluated per source with each source's metric."""
    teacher = tmp_path / "teacher"
    recipe.main([tiny_yaml(tmp_path / "teacher.yaml", output_dir=str(teacher)), "dataset=docvqa",
                f"dataset_path={hub_dirs['docvqa']}", "train_split=validation", "max_steps=1"])
    mixture = [{"name": "docvqa", "path": hub_dirs["docvqa"], "split": "validation", "eval_split": "validation",
                "weight": 0.5},
               {"name": "chartqa", "path": hub_dirs["chartqa"], "split": "train", "eval_split": "val", "weight": 0.3},
               {"name": "vqav2", "path": hub_dirs["vqav2"], "split": "validation", "eval_split": "validation",
                "weight": 0.2}]
    config = tiny_yaml(tmp_path / "mixture.yaml", dataset_mixture=mixture, mixture_seed=3,
                       alignment_targets="teacher", teacher_checkpoint=str(teacher / "checkpoint"),
                       max_eval_samples=8)
    trainer = recipe.main([config])
    rows = trainer.train_dataset
    tasks = rows["task"]
    assert set(tasks) == {"docvqa", "chartqa", "vqav2"} and len(rows) >= 3 * NUM_ROWS  # all_exhausted
    assert tasks.count("docvqa") > tasks.count("vqav2")  # weights 0.5 vs 0.2
    assert list(load_mixture_tasks(config)) == tasks  # seeded: the same interleaving again
    targets = torch.tensor(rows["teacher_targets"])
    assert targets.shape == (len(rows), 64) and torch.allclose(targets.sum(-1), torch.ones(len(rows)), atol=1e-4)
    assert (tmp_path / "out" / "teacher_targets").is_dir()

    summary = eval_script.main([str(tmp_path / "out" / "checkpoint"), "--dataset-mixture", config, "--budget", "4",
                                "--no-calibration", "--num-samples", "4", "--baselines", "none", "--batch-size",
                                "4", "--max-new-tokens", "4", "--heatmaps-per-task", "1", "--quiet",
                                "--output-dir", str(tmp_path / "eval")])
    written = json.loads((tmp_path / "eval" / "mixture.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert {name: entry["metric"] for name, entry in written["sources"].items()} == METRICS
    assert written["sources"]["chartqa"]["split"] == "val"
    for name in METRICS:
        report = json.loads((tmp_path / "eval" / name / "eval.json").read_text())
        assert report["meta"]["metric"] == METRICS[name] and 0.0 <= report["methods"]["tier_4"]["accuracy"] <= 1.0


def load_mixture_tasks(config):
    _, data_args, _ = recipe.parse_config([config])
    model_config = AutoConfig.from_pretrained(TINY_PRESET)
    return recipe.build_datasets(data_args, model_config)[0]["task"]


def test_mixture_entries_are_checked():
    with pytest.raises(ValueError, match="unknown key"):
        parse_mixture([{"name": "docvqa", "wieght": 1}])
    with pytest.raises(ValueError, match="weight must be > 0"):
        parse_mixture([{"name": "chartqa", "weight": 0}])
    with pytest.raises(ValueError, match="more than once"):
        parse_mixture([{"name": "DocVQA"}, {"name": "docvqa"}])
    with pytest.raises(ValueError, match="unknown Hub dataset"):
        parse_mixture([{"name": "coco"}])


def test_gqa_local_repo_joins_its_two_tables(pages, tmp_path):
    """lmms-lab/GQA keeps questions and images in two configs of one repo (testdev_balanced_instructions,
    testdev_balanced_images); a local copy of the repo serves both."""
    questions = [{"id": str(i), "imageId": f"n{i}", "question": p["question"], "answer": p["answers"][0],
                  "fullAnswer": p["answers"][0], "isBalanced": True} for i, p in enumerate(pages[:4])]
    images = [{"id": f"n{i}", "image": {"bytes": _png(p["image"]), "path": None}}
              for i, p in reversed(list(enumerate(pages[:4])))]
    for config, rows, features in (("testdev_balanced_instructions", questions, None),
                                   ("testdev_balanced_images", images,
                                    datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()}))):
        (tmp_path / config).mkdir()
        datasets.Dataset.from_list(rows, features=features).to_parquet(
            str(tmp_path / config / "testdev-00000-of-00001.parquet"))
    loaded = load_hub_dataset("gqa", path=str(tmp_path))
    assert loaded["answers"] == [[p["answers"][0]] for p in pages[:4]]
    assert [r["image"].tobytes() for r in loaded] == [p["image"].tobytes() for p in pages[:4]]
