"""See the allocation: a Gradio app that answers a question about a page and shows how many visual tokens the
model spent on it, where, and what every other budget would have answered.

    python app.py [--checkpoint DIR_OR_HUB_NAME] [--host 127.0.0.1] [--port 7860]     (or: make app)

`load(checkpoint)` and `build_app(model, processor, examples)` are separate so tests build the app in-process.
Everything the app shows comes from the model's public API: `generate` for answers, the forward's
`visual_token_counts` for token use, `modeling_arrcoc.explanation` for the tier, kept patches and scores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass

# Set before gradio is imported: it reads this at import time, and the app must not phone home (no network in CI).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

import modeling_arrcoc  # noqa: E402,F401  (registers ArrCoc with the Auto classes)
from modeling_arrcoc.data.collator import chat_prompt  # noqa: E402
from modeling_arrcoc.data.synthetic import make_synthetic_suite  # noqa: E402
from modeling_arrcoc.explanation import explain, render_heatmap  # noqa: E402
from modeling_arrcoc.provenance import REPO_ROOT  # noqa: E402

ROOT = REPO_ROOT  # defaults resolve from the repository, whatever the working directory
TRAINED_CHECKPOINT = ROOT / "outputs" / "demo" / "checkpoint"  # written by `make demo`
SHIPPED_BASE = ROOT / "pretrained" / "demo-base"
MAX_NEW_TOKENS = 8  # synthetic answers are a few characters; the demo never needs more
HEATMAP_MIN_SIDE = 512  # small pages are enlarged (nearest) so single patches stay visible in the browser
TABLE_HEADERS = ["tier", "answer", "visual tokens"]


@dataclass
class Example:
    """A bundled page: its image, the suite's question for it (suggested to the user) and the reference answer."""

    name: str
    image: Image.Image
    question: str
    answer: str
    task: str


def default_checkpoint() -> str:
    """The model `make demo` trained if it exists, else the base shipped in the repository."""
    return str(TRAINED_CHECKPOINT if (TRAINED_CHECKPOINT / "config.json").exists() else SHIPPED_BASE)


def load(checkpoint: str):
    """Model and processor from a local directory or a Hub name."""
    # float32: the shipped base stores float16 weights, which CPU kernels (SAM's conv) do not take with the
    # processor's float32 pixels; the demo model is small enough that float32 costs nothing.
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    return model, processor


def make_examples(num_pages: int = 12, seed: int = 0) -> list[Example]:
    """One held-out test page per task family of the synthetic suite (fast: a dozen pages are rendered)."""
    # A throwaway cache: the pages are copied into memory, and the user's datasets cache stays untouched.
    with tempfile.TemporaryDirectory(prefix="arrcoc-app-") as cache_dir:
        suite = make_synthetic_suite(num_train=1, num_validation=1, num_test=num_pages, seed=seed, cache_dir=cache_dir)
        rows = [dict(row, image=row["image"].convert("RGB")) for row in suite["test"]]
    first_of_family = {}
    for row in rows:
        first_of_family.setdefault(row["task"], row)
    return [
        Example(f"{i}. {row['task']}: {row['question']}", row["image"], row["question"], row["answers"][0], row["task"])
        for i, row in enumerate(first_of_family.values(), start=1)
    ]


def parse_budget(value) -> str | int:
    """The budget box's text -> what `generate` takes. Anything unparsable is passed on as it is, so the model's
    own error names what is accepted (the app does not keep a second copy of the budget rules)."""
    text = "auto" if value is None else str(value).strip()
    if text in ("", "auto"):
        return "auto"
    try:
        return int(text)
    except ValueError:
        return text


def prompt_inputs(processor, images, questions):
    """Chat-template prompts (one <image> each, the package's `chat_prompt`) and pixel values, as in
    docs/inference.md."""
    return processor(images=list(images), text=[chat_prompt(processor, question) for question in questions])


@torch.no_grad()
def answer_batch(model, processor, images, questions, budgets) -> tuple[list[str], list[int]]:
    """Greedy answers and the visual tokens each sample actually used (the forward's `visual_token_counts`).
    `budgets`: one budget for the batch, or a list of tiers, one per sample."""
    inputs = prompt_inputs(processor, images, questions)
    counts = model(**inputs, budget=budgets).visual_token_counts.tolist()
    sequences = model.generate(**inputs, budget=budgets, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    new_tokens = sequences[:, inputs["input_ids"].shape[1]:]  # generate returns the prompt first
    answers = [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers, [int(c) for c in counts]


def tier_table(model, processor, image, question) -> list[list]:
    """The same question at every tier, one batch (one tier per sample), so a user sees where more tokens stop
    helping."""
    tiers = list(model.config.budgets)
    answers, counts = answer_batch(model, processor, [image] * len(tiers), [question] * len(tiers), tiers)
    return [[tier, answer, count] for tier, answer, count in zip(tiers, answers, counts)]


def heatmap_image(image, explanation) -> Image.Image:
    """The page with the allocator's scores painted over it and the kept patches outlined."""
    scale = max(1, HEATMAP_MIN_SIDE // max(image.size))
    # Integer nearest-neighbour enlargement keeps the patch grid aligned with the page, which render_heatmap needs.
    big = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return render_heatmap(big, explanation)


def tier_summary(model, explanation, budget) -> str:
    budgets = list(model.config.budgets)
    how = "chosen by the budget predictor" if budget == "auto" else f"forced (budget {budget!r})"
    return f"{explanation.tier_value} (tier {explanation.tier} of {budgets}, {how})"


class Demo:
    """The app's callbacks, bound to one model, processor and list of examples."""

    def __init__(self, model, processor, examples):
        self.model, self.processor = model, processor
        self.examples = {example.name: example for example in examples}

    def page(self, example_name, upload):
        """The page to read: an upload wins over the selected example. Uploads are opened by the processor's
        own loader, so an unreadable file gets its error ("Image 0 is not a readable image file: ...")."""
        if upload:
            return self.processor.image_processor.load(upload)
        if example_name in self.examples:
            return self.examples[example_name].image
        raise ValueError("No page: pick an example page or upload an image.")

    def select_example(self, example_name):
        """Selecting an example shows its page, suggests its question and reference answer, and drops any upload."""
        example = self.examples.get(example_name)
        if example is None:
            return None, "", "", None
        return example.image, example.question, reference_text(example), None

    def preview_upload(self, upload):
        """Show an uploaded page as soon as it arrives; an unreadable one is reported right away."""
        if not upload:
            return gr.skip(), gr.skip()
        try:
            return self.processor.image_processor.load(upload), reference_text(None)
        except ValueError as error:
            raise gr.Error(str(error), title="Bad input") from None

    def ask(self, example_name, upload, question, budget):
        """-> answer, tier chosen, visual tokens, heatmap, every-tier table. Bad input becomes a gr.Error with the
        model's or processor's message (shown in the page; the app keeps serving)."""
        try:
            return self._ask(example_name, upload, question or "", parse_budget(budget))
        except ValueError as error:  # the documented input errors (docs/inference.md, "Bad input")
            raise gr.Error(str(error), title="Bad input") from None

    def _ask(self, example_name, upload, question, budget):
        image = self.page(example_name, upload)
        # The answer first: generate checks the question, the budget and the context length before any work.
        (answer,), (count,) = answer_batch(self.model, self.processor, [image], [question], budget)
        explanation = explain(self.model, self.processor, image, question, budget=budget)
        table = tier_table(self.model, self.processor, image, question)
        return answer, tier_summary(self.model, explanation, budget), count, heatmap_image(image, explanation), table


def reference_text(example) -> str:
    if example is None:
        return "Uploaded page: no reference answer."
    return f"Reference answer ({example.task}, from the synthetic suite): **{example.answer}**"


def _input_panel(examples, budgets) -> dict:
    """Left column: the page (an example or an upload), the question and the budget."""
    first = examples[0] if examples else None
    panel = {
        "example": gr.Dropdown([e.name for e in examples], value=first.name if first else None,
                               label="Example page (held-out test split)", elem_id="example"),
        "reference": gr.Markdown(reference_text(first) if first else "", elem_id="reference"),
        "page": gr.Image(first.image if first else None, label="Page", type="pil", interactive=False,
                         elem_id="page", height=256),
        # gr.File, not an image input: the app, not Gradio, opens the upload, so a broken file gets the
        # processor's error instead of a failure inside Gradio's preprocessing.
        "upload": gr.File(label="...or upload a page (takes precedence over the example)", file_types=["image"],
                          type="filepath", elem_id="upload", height=150),
        "question": gr.Textbox(first.question if first else "", label="Question", lines=2, elem_id="question"),
        # allow_custom_value: a typed or API budget reaches the model, whose error lists what is accepted.
        "budget": gr.Dropdown(["auto"] + [str(b) for b in budgets], value="auto", label="Budget (visual tokens)",
                              allow_custom_value=True, elem_id="budget"),
    }
    panel["ask"] = gr.Button("Ask", variant="primary", elem_id="ask")
    return panel


def _output_panel() -> dict:
    """Right column: the answer, the tier and tokens, where the tokens went, and every tier side by side."""
    panel = {"answer": gr.Textbox(label="Answer", interactive=False, elem_id="answer")}
    with gr.Row():
        panel["tier"] = gr.Textbox(label="Tier", interactive=False, elem_id="tier")
        panel["tokens"] = gr.Number(label="Visual tokens used", interactive=False, precision=0, elem_id="tokens")
    # The label as text above, not Gradio's badge, which would cover the page's top-left patches.
    gr.Markdown("**Where the tokens went:** the allocator's scores as heat, kept patches outlined in cyan")
    panel["heatmap"] = gr.Image(label="Allocator scores and kept patches", show_label=False, type="pil",
                                interactive=False, elem_id="heatmap", height=560)
    panel["table"] = gr.Dataframe(headers=TABLE_HEADERS, label="The same question at every tier", interactive=False,
                                  elem_id="tiers")
    return panel


def build_app(model, processor, examples) -> gr.Blocks:
    """The Gradio Blocks: inputs on the left, what the model did on the right. API endpoint: /ask."""
    demo = Demo(model, processor, examples)
    budgets = list(model.config.budgets)
    rows, cols = model.config.grid_size
    with gr.Blocks(title="ARR-COC: see the allocation") as blocks:
        gr.Markdown(
            f"# ARR-COC: see the allocation\nTiers (visual tokens): {budgets} of {rows * cols} patches. Pick a page "
            "or upload one, ask a question, and see how many tokens the model spent and where."
        )
        with gr.Row():
            with gr.Column(scale=1):
                inputs = _input_panel(examples, budgets)
            with gr.Column(scale=2):
                outputs = _output_panel()
        ask_inputs = [inputs[name] for name in ("example", "upload", "question", "budget")]
        ask_outputs = [outputs[name] for name in ("answer", "tier", "tokens", "heatmap", "table")]
        inputs["example"].change(demo.select_example, inputs["example"],
                                 [inputs[name] for name in ("page", "question", "reference", "upload")],
                                 api_name="example")
        inputs["upload"].upload(demo.preview_upload, inputs["upload"], [inputs["page"], inputs["reference"]],
                                api_visibility="private")
        inputs["ask"].click(demo.ask, ask_inputs, ask_outputs, api_name="ask")
        inputs["question"].submit(demo.ask, ask_inputs, ask_outputs, api_visibility="private")  # Enter asks too
    return blocks


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=default_checkpoint(),
                        help="local directory or Hub name (default: outputs/demo/checkpoint if it exists, else "
                             "pretrained/demo-base)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    model, processor = load(args.checkpoint)
    app = build_app(model, processor, make_examples())
    print(f"ARR-COC app: checkpoint {args.checkpoint}")
    # show_error: an unexpected failure shows its message (never a traceback) instead of a bare "Error".
    app.launch(server_name=args.host, server_port=args.port, show_error=True)


__all__ = ["Example", "build_app", "default_checkpoint", "load", "main", "make_examples", "parse_budget"]

if __name__ == "__main__":
    main()
