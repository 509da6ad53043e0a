"""pipeline("image-text-to-text"): chat messages, plain images + text, batching, budget, and trust_remote_code.

Every generated text is checked against the decode of the model's own `generate` for the same inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor, pipeline

from conftest import TINY_PRESET
from modeling_arrcoc import ArrCocForConditionalGeneration

MAX_NEW = 5


def page(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8))


def chat(seed, question):
    return [{"role": "user", "content": [{"type": "image", "image": page(seed)}, {"type": "text", "text": question}]}]


QUESTIONS = ("What colour is the top left corner?", "Count the squares.", "Which digit is in row three of the grid?")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random model saved with the tiny preset's processor, as a user's fine-tuned checkpoint would be."""
    path = tmp_path_factory.mktemp("arrcoc-tiny")
    torch.manual_seed(0)
    ArrCocForConditionalGeneration(AutoConfig.from_pretrained(TINY_PRESET)).save_pretrained(path)
    AutoProcessor.from_pretrained(TINY_PRESET).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return pipeline("image-text-to-text", model=str(checkpoint))


def expected_text(pipe, inputs, budget="auto"):
    """The model's own generate on the processor's inputs, new tokens decoded."""
    with torch.no_grad():
        sequences = pipe.model.generate(**inputs, budget=budget, max_new_tokens=MAX_NEW, do_sample=False)
    new_tokens = sequences[:, inputs["input_ids"].shape[1]:]
    return pipe.processor.batch_decode(new_tokens, skip_special_tokens=True)


def chat_inputs(processor, messages):
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)


def test_the_registered_package_serves_the_pipeline(pipe):
    assert type(pipe.model).__module__ == "modeling_arrcoc.modeling_arrcoc"
    assert type(pipe.processor).__name__ == "ArrCocProcessor"


def test_chat_messages(pipe):
    messages = chat(0, QUESTIONS[0])
    expected = expected_text(pipe, chat_inputs(pipe.processor, messages))[0]
    assert expected.strip(), "the reference itself must not be empty"
    out = pipe(text=messages, max_new_tokens=MAX_NEW, return_full_text=False)
    assert out == [{"input_text": messages, "generated_text": expected}]
    full = pipe(text=messages, max_new_tokens=MAX_NEW)[0]["generated_text"]
    assert full == messages + [{"role": "assistant", "content": expected}], "the answer comes without the prompt"


def test_plain_images_and_text(pipe):
    image, text = page(1), "<image>\n" + QUESTIONS[1]
    expected = expected_text(pipe, pipe.processor(images=image, text=text))[0]
    out = pipe(images=image, text=text, max_new_tokens=MAX_NEW, return_full_text=False)
    assert out == [{"input_text": text, "generated_text": expected}]
    with pytest.raises(ValueError, match="Put <image> where the image goes"):
        pipe(images=image, text=QUESTIONS[1], max_new_tokens=MAX_NEW)


def test_batch_size_above_one_gives_each_samples_own_answer(pipe):
    chats = [chat(seed, question) for seed, question in enumerate(QUESTIONS)]
    expected = [expected_text(pipe, chat_inputs(pipe.processor, c), budget=4)[0] for c in chats]
    out = pipe(text=chats, batch_size=2, max_new_tokens=MAX_NEW, return_full_text=False,
               generate_kwargs={"budget": 4})
    assert [records[0]["generated_text"] for records in out] == expected
    plain = [{"images": page(seed), "text": "<image>\n" + q} for seed, q in enumerate(QUESTIONS)]
    expected = [expected_text(pipe, pipe.processor(images=p["images"], text=p["text"]), budget=4)[0] for p in plain]
    # A stream of {"images", "text"} dicts is batched by the pipeline's collator (left padding)...
    out = pipe((p for p in plain), batch_size=2, max_new_tokens=MAX_NEW, return_full_text=False,
               generate_kwargs={"budget": 4})
    assert [records[0]["generated_text"] for records in out] == expected
    # ...while lists of images and texts go through the processor as one batch.
    out = pipe(images=[p["images"] for p in plain], text=[p["text"] for p in plain], max_new_tokens=MAX_NEW,
               return_full_text=False, generate_kwargs={"budget": 4})
    assert [record["generated_text"] for record in out] == expected


def test_budget_goes_through_generate_kwargs(pipe):
    chats = [chat(seed, question) for seed, question in enumerate(QUESTIONS)]
    answers = {}
    for budget in (4, 100):
        out = pipe(text=chats, max_new_tokens=MAX_NEW, return_full_text=False, generate_kwargs={"budget": budget})
        answers[budget] = [records[0]["generated_text"] for records in out]
        assert answers[budget] == [expected_text(pipe, chat_inputs(pipe.processor, c), budget)[0] for c in chats]
    assert answers[4] != answers[100], "4 and 100 visual tokens give different answers"


def test_a_token_price_on_auto_goes_through_generate_kwargs(pipe):
    chats = [chat(seed, question) for seed, question in enumerate(QUESTIONS)]
    for cost, tier in ((50.0, 4), (-50.0, 100)):  # a steep price buys the smallest tier, a negative one the largest
        out = pipe(text=chats, max_new_tokens=MAX_NEW, return_full_text=False,
                   generate_kwargs={"budget": "auto", "budget_cost": cost})
        answers = [records[0]["generated_text"] for records in out]
        assert answers == [expected_text(pipe, chat_inputs(pipe.processor, c), tier)[0] for c in chats]


REMOTE_SCRIPT = """
import json, sys
import numpy as np
from PIL import Image
from transformers import pipeline

def page(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8))

questions = {questions!r}
chats = [[{{"role": "user", "content": [{{"type": "image", "image": page(s)}}, {{"type": "text", "text": q}}]}}]
         for s, q in enumerate(questions)]
pipe = pipeline("image-text-to-text", model={checkpoint!r}, trust_remote_code=True)
assert "modeling_arrcoc" not in sys.modules, "the package must not be imported"
common = dict(max_new_tokens={max_new}, return_full_text=False)
result = {{
    "modules": [type(pipe.model).__module__, type(pipe.processor).__module__],
    "chat": pipe(text=chats[0], **common)[0]["generated_text"],
    "plain": pipe(images=page(1), text="<image>\\n" + questions[1], **common)[0]["generated_text"],
    "batch": [r[0]["generated_text"] for r in pipe(text=chats, batch_size=2, generate_kwargs={{"budget": 4}}, **common)],
}}
print(json.dumps(result))
"""


def test_saved_checkpoint_pipeline_with_trust_remote_code(pipe, checkpoint, tmp_path):
    files = set(os.listdir(checkpoint))
    assert {"processing_arrcoc.py", "modeling_arrcoc.py", "tokenizer.json", "processor_config.json",
            "chat_template.jinja"} <= files
    script = REMOTE_SCRIPT.format(questions=QUESTIONS, checkpoint=str(checkpoint), max_new=MAX_NEW)
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules") for module in remote["modules"]), remote["modules"]
    chats = [chat(seed, question) for seed, question in enumerate(QUESTIONS)]
    assert remote["chat"] == expected_text(pipe, chat_inputs(pipe.processor, chats[0]))[0]
    assert remote["plain"] == expected_text(pipe, pipe.processor(images=page(1), text="<image>\n" + QUESTIONS[1]))[0]
    assert remote["batch"] == [expected_text(pipe, chat_inputs(pipe.processor, c), budget=4)[0] for c in chats]
