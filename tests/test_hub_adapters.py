"""Hub adapters on hand-written rows in each dataset's schema; loading paths without a network."""

from __future__ import annotations

import time

import datasets
import numpy as np
import pytest
from PIL import Image

from modeling_arrcoc.data.hub import (
    COMMON_FEATURES,
    HUB_DATASETS,
    adapt_row,
    adapt_rows,
    load_hub_dataset,
    resolve_name,
)
from modeling_arrcoc.data.synthetic import FEATURES


def _image(shade=0, size=(24, 16)):
    return Image.fromarray(np.full((size[1], size[0], 3), shade, np.uint8), "RGB")


# Rows written in each source's Hub schema (column names as on the dataset cards; see hub.py's docstring).
ROWS = {
    "docvqa": [
        {"questionId": "337", "question": "what is the date mentioned in this letter?",
         "question_types": ["handwritten"], "image": _image(1), "docId": 279, "ucsf_document_id": "xnbl0037",
         "ucsf_document_page_no": "1", "answers": ["1/8/93"], "data_split": "val"},
        {"questionId": "338", "question": "what is the contact person name?", "question_types": ["form"],
         "image": _image(2), "docId": 280, "ucsf_document_id": "xnbl0038", "ucsf_document_page_no": "2",
         "answers": ["P. Carter", "p. carter"], "data_split": "val"},
        {"questionId": "57344", "question": "what is the total?", "question_types": None, "image": _image(3),
         "docId": 281, "ucsf_document_id": "x", "ucsf_document_page_no": "1", "answers": None, "data_split": "test"},
    ],
    "infovqa": [
        {"questionId": "98313", "question": "Which social platform has heavy female audience?",
         "answers": ["pinterest"], "answer_type": ["single span"], "image": _image(4), "image_url": "u",
         "operation/reasoning": [""], "ocr": "{}", "data_split": "val"},
        {"questionId": "98314", "question": "What percent use Twitter?", "answers": ["24%", "24"],
         "answer_type": ["single span"], "image": _image(5), "image_url": "u", "operation/reasoning": [""],
         "ocr": "{}", "data_split": "val"},
    ],
    "chartqa": [
        {"image": _image(6), "query": "What is the value of Ghana?", "label": ["45"], "human_or_machine": 0},
        {"image": _image(7), "query": "Which year has the highest value?", "label": ["2019"], "human_or_machine": 1},
    ],
    "plotqa": [
        {"images": [_image(8)], "texts": [
            {"user": "What is the label of the x-axis?", "assistant": "Year", "source": "PlotQA"},
            {"user": "How many bars are there?", "assistant": "4", "source": "PlotQA"},
        ]},
        {"images": [_image(9)],
         "texts": [{"user": "What is the maximum value?", "assistant": "12.5", "source": "PlotQA"}]},
    ],
    "vqav2": [
        {"question_type": "what color", "multiple_choice_answer": "white",
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                     for i, a in enumerate(["white", "gray", "white", "white", "white", "white", "white", "white",
                                            "white", "white"])],
         "image_id": 262148, "answer_type": "other", "question_id": 262148000,
         "question": "What color is the plate?", "image": _image(10)},
        {"question_type": "is the", "multiple_choice_answer": "yes",
         "answers": [{"answer": a, "answer_confidence": "maybe", "answer_id": i + 1}
                     for i, a in enumerate(["no", "yes", "yes", "yes", "no", "yes", "yes", "yes", "yes", "yes"])],
         "image_id": 1, "answer_type": "yes/no", "question_id": 1000, "question": "Is the man happy?",
         "image": _image(11)},
    ],
    "gqa": [
        {"id": "201307251", "imageId": "n407373", "question": "Is it an outdoors scene?", "answer": "no",
         "fullAnswer": "No, it is indoors.", "isBalanced": True, "image": _image(12)},
        {"id": "201640614", "imageId": "n161313", "question": "Who is wearing the shirt?", "answer": "girl",
         "fullAnswer": "The girl is wearing a shirt.", "isBalanced": True, "image": _image(13)},
    ],
    "textvqa": [
        {"image_id": "003a8ae2ef43b901", "question_id": 34602, "question": "what is the brand of this camera?",
         "question_tokens": ["what", "is", "the", "brand"], "image": _image(14), "image_width": 24,
         "image_height": 16, "flickr_original_url": "", "flickr_300k_url": "",
         "answers": ["nous les gosses", "dakota", "clos culombu", "dakota digital", "dakota", "dakota",
                     "dakota digital", "dakota digital", "dakota", "dakota"],
         "image_classes": ["Camera"], "set_name": "val", "ocr_tokens": ["DAKOTA"]},
        {"image_id": "x", "question_id": 34603, "question": "what does the sign say?", "question_tokens": [],
         "image": _image(15), "image_width": 24, "image_height": 16, "flickr_original_url": "",
         "flickr_300k_url": "", "answers": ["stop"] * 10, "image_classes": [], "set_name": "val", "ocr_tokens": []},
    ],
    "stvqa": [
        {"question_id": 1, "question": "What is written on the bus?", "image": _image(16)},
        {"question_id": 2, "question": "What brand is shown?", "image": _image(17), "answers": ["nike", "Nike"]},
    ],
}

EXPECTED = {  # (question, answers) per row, for every common row a Hub row yields
    "docvqa": [("what is the date mentioned in this letter?", ["1/8/93"]),
               ("what is the contact person name?", ["P. Carter", "p. carter"]),
               ("what is the total?", [])],
    "infovqa": [("Which social platform has heavy female audience?", ["pinterest"]),
                ("What percent use Twitter?", ["24%", "24"])],
    "chartqa": [("What is the value of Ghana?", ["45"]), ("Which year has the highest value?", ["2019"])],
    "plotqa": [("What is the label of the x-axis?", ["Year"]), ("How many bars are there?", ["4"]),
               ("What is the maximum value?", ["12.5"])],
    "vqav2": [("What color is the plate?", ["white", "gray"] + ["white"] * 8),
              ("Is the man happy?", ["yes", "no", "yes", "yes", "no", "yes", "yes", "yes", "yes", "yes"])],
    "gqa": [("Is it an outdoors scene?", ["no"]), ("Who is wearing the shirt?", ["girl"])],
    "textvqa": [("what is the brand of this camera?",
                 ["dakota", "nous les gosses", "clos culombu", "dakota digital", "dakota", "dakota",
                  "dakota digital", "dakota digital", "dakota", "dakota"]),
                ("what does the sign say?", ["stop"] * 10)],
    "stvqa": [("What is written on the bus?", []), ("What brand is shown?", ["nike", "Nike"])],
}


def test_every_hub_dataset_has_rows_and_a_valid_spec():
    assert set(ROWS) == set(HUB_DATASETS) == set(EXPECTED)
    for spec in HUB_DATASETS.values():
        assert spec.metric in {"anls", "relaxed_accuracy", "vqa_accuracy", "exact_match"}
        assert "/" in spec.repo_id and spec.split and callable(spec.adapter)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_adapter_maps_every_common_field(name):
    produced = [row for hub_row in ROWS[name] for row in adapt_rows(name, hub_row)]
    assert [(r["question"], r["answers"]) for r in produced] == EXPECTED[name]
    images = [img for hub_row in ROWS[name] for img in ([hub_row["images"][0]] * len(hub_row["texts"])
                                                        if name == "plotqa" else [hub_row["image"]])]
    for row, image in zip(produced, images):
        assert set(row) == set(COMMON_FEATURES)
        assert row["image"] is image
        assert row["boxes"] == [] and row["task"] == name
        assert row["source"] == HUB_DATASETS[name].repo_id and row["variant"] == "standard"
        assert all(isinstance(a, str) for a in row["answers"])
    assert adapt_row(name, ROWS[name][0]) == produced[0]


def test_common_features_match_the_synthetic_schema():
    assert COMMON_FEATURES == FEATURES


def test_names_resolve_and_unknown_names_list_the_known_ones():
    assert resolve_name("ST-VQA") == "stvqa" and resolve_name("InfographicVQA") == "infovqa"
    assert resolve_name("DocVQA") == "docvqa"
    with pytest.raises(ValueError, match="docvqa.*vqav2"):
        adapt_row("coco-captions", {})
    with pytest.raises(ValueError, match="chartqa"):
        load_hub_dataset("nope")


def test_offline_load_fails_fast_and_names_the_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as info:
        load_hub_dataset("docvqa", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "docvqa" in message and "lmms-lab/DocVQA" in message and "HF_HUB_OFFLINE" in message
    assert "path=" in message


def _saved(tmp_path, name, rows):
    folder = tmp_path / name
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    return str(folder)


@pytest.mark.parametrize("name", ["docvqa", "chartqa", "plotqa", "vqav2", "textvqa"])
def test_load_from_a_local_copy(tmp_path, name):
    rows = [r for r in ROWS[name] if r.get("answers", True) is not None]
    loaded = load_hub_dataset(name, path=_saved(tmp_path, name, rows))
    assert loaded.features == COMMON_FEATURES
    expected = [e for e, r in zip(EXPECTED[name], ROWS[name]) if r.get("answers", True) is not None]
    if name == "plotqa":
        expected = EXPECTED[name]
    assert [(r["question"], r["answers"]) for r in loaded] == expected
    assert all(r["image"].size == (24, 16) and r["task"] == name for r in loaded)


def test_gqa_joins_questions_with_the_image_table(tmp_path):
    questions = [{k: v for k, v in row.items() if k != "image"} for row in ROWS["gqa"]]
    images = [{"id": "n161313", "image": _image(200)}, {"id": "n407373", "image": _image(100)}]
    loaded = load_hub_dataset("gqa", path=_saved(tmp_path, "q", questions), image_path=_saved(tmp_path, "i", images))
    assert [r["answers"] for r in loaded] == [["no"], ["girl"]]
    assert [np.asarray(r["image"])[0, 0, 0] for r in loaded] == [100, 200]


def test_streaming_from_a_local_copy(tmp_path):
    loaded = load_hub_dataset("chartqa", path=_saved(tmp_path, "c", ROWS["chartqa"]), streaming=True)
    assert [r["answers"] for r in loaded] == [["45"], ["2019"]]
