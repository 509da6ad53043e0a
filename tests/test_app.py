"""The Gradio app (app.py), served for real on 127.0.0.1 with the shipped base, driven in headless Chromium
(Debian's chromium + chromium-driver, through selenium) and through gradio_client's API.

The model is loaded and the app launched once per module. Chromium is not optional: CI installs it (.ci/run), and
a machine without it fails here with a message saying what to install.
"""

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no phoning home

import app as arrcoc_app  # noqa: E402  (the repository root is on sys.path: tests/conftest.py)

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "pretrained" / "demo-base"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Into the git-ignored outputs/: `make readme` copies it to docs/ (a test never rewrites a tracked file).
SCREENSHOT = ROOT / "outputs" / "app" / "app_screenshot.png"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1700",
)
# Gradio's queue calls pandas options that pandas 3 deprecates; not this project's code.
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
WAIT_S = 60  # one answer takes well under a second once warm; the first includes warm-up on a loaded machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """The app on a free port (in this process, a server thread), with the model it serves and its examples."""
    model, processor = arrcoc_app.load(str(BASE))
    examples = arrcoc_app.make_examples()
    blocks = arrcoc_app.build_app(model, processor, examples)
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "model": model, "processor": processor, "examples": examples}
    finally:
        blocks.close()


def expected(served, example, budget="auto"):
    """What the model itself answers, and the tokens it uses, for an example (computed in-process)."""
    (answer,), (count,) = arrcoc_app.answer_batch(served["model"], served["processor"], [example.image],
                                                 [example.question], budget)
    return answer, count


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install Debian's browser with "
                    "`apt-get install -y chromium chromium-driver` (.ci/run does this in CI)")
    os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium must not report usage anywhere
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver path too, selenium never looks for a browser itself
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="arrcoc-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Browser helpers: the app gives every component an elem_id, so selectors do not depend on Gradio's markup classes.
# ----------------------------------------------------------------------------------------------------------------


def wait_for(driver, condition, message, timeout=WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message=message)


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def field(driver, elem_id):
    """The value of a Textbox (textarea) or Number (input) by elem_id."""
    return css(driver, f"#{elem_id} textarea, #{elem_id} input").get_attribute("value")


def open_app(driver, url):
    driver.get(url)
    wait_for(driver, lambda d: css(d, "#ask").is_displayed(), "the app did not render")


def choose_example(driver, example):
    """Pick an example in the dropdown; the app then suggests its question."""
    from selenium.webdriver.common.by import By

    css(driver, "#example input").click()
    options = wait_for(driver, lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "#example li")
                                          if o.text.strip() == example.name], f"option {example.name!r} not listed")
    options[0].click()
    wait_for(driver, lambda d: field(d, "question") == example.question, "the example's question was not suggested")


def type_question(driver, text):
    from selenium.webdriver.common.keys import Keys

    box = css(driver, "#question textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    if text:
        box.send_keys(text)


def ask_and_wait_for_answer(driver):
    """Click Ask on a cleared answer box and wait until an answer is shown."""
    driver.execute_script("document.querySelector('#answer textarea').value = ''")
    css(driver, "#ask").click()
    return wait_for(driver, lambda d: field(d, "answer").strip(), "no answer was shown")


def page_text(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def wait_for_text(driver, text, message):
    wait_for(driver, lambda d: text in page_text(d), message)


# ----------------------------------------------------------------------------------------------------------------


def test_browser_shows_answer_tokens_heatmap_and_every_tier(served, browser):
    start = time.perf_counter()
    model = served["model"]
    example = next(e for e in served["examples"] if e.task == "local_color")  # one the demo model reads
    want_answer, want_tokens = expected(served, example)

    open_app(browser, served["url"])
    choose_example(browser, example)
    type_question(browser, example.question)  # a user types (here: the suggested question again)
    answer = ask_and_wait_for_answer(browser)

    assert answer == want_answer
    wait_for(browser, lambda d: field(d, "tokens") == str(want_tokens), "the token count was not shown")
    assert want_tokens in model.config.budgets
    assert field(browser, "tier").startswith(f"{want_tokens} (tier "), field(browser, "tier")
    heatmap = wait_for(browser, lambda d: d.execute_script(
        "const img = document.querySelector('#heatmap img'); return img && img.complete && img.naturalWidth > 0 "
        "? [img.naturalWidth, img.naturalHeight] : null"), "the heatmap image was not shown")
    assert heatmap[0] >= 512, "small pages are enlarged so patches are visible"
    table = css(browser, "#tiers").text
    for tier in model.config.budgets:
        assert str(tier) in table

    browser.execute_script("window.scrollTo(0, 0)")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    with Image.open(SCREENSHOT) as shot:
        assert shot.width >= 1000 and shot.height >= 800
    print(f"browser round trip {time.perf_counter() - start:.1f} s; screenshot {SCREENSHOT}")


def test_api_answers_with_token_counts(served, tmp_path):
    from gradio_client import Client, handle_file

    model, examples = served["model"], served["examples"]
    client = Client(served["url"], verbose=False)
    example = examples[1]
    want_answer, want_tokens = expected(served, example)

    answer, tier, tokens, heatmap, table = client.predict(example.name, None, example.question, "auto", api_name="/ask")
    assert (answer, tokens) == (want_answer, want_tokens)
    assert tier.startswith(f"{want_tokens} (tier ")
    with Image.open(heatmap) as image:
        assert image.width >= 512
    assert [row[0] for row in table["data"]] == list(model.config.budgets)
    assert [row[2] for row in table["data"]] == list(model.config.budgets), "each tier uses its number of tokens"

    forced = client.predict(example.name, None, example.question, "16", api_name="/ask")
    assert forced[2] == 16 and forced[0] == expected(served, example, 16)[0]
    assert forced[1].startswith("16 (tier 2 of") and "forced" in forced[1]

    page = tmp_path / "page.png"
    example.image.save(page)
    uploaded = client.predict(examples[0].name, handle_file(str(page)), example.question, "auto", api_name="/ask")
    assert uploaded[0] == want_answer and uploaded[2] == want_tokens, "an upload takes precedence over the example"


def test_bad_input_is_reported_and_the_app_keeps_serving(served, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    example = served["examples"][1]
    client = Client(served["url"], verbose=False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    cases = {
        "no page": ((None, None, example.question, "auto"), "No page: pick an example page or upload an image"),
        "empty question": ((example.name, None, "   ", "auto"), "The conversation has no text"),
        "unreadable upload": ((example.name, handle_file(str(broken)), example.question, "auto"),
                              "Image 0 is not a readable image file"),
        "question past the context": ((example.name, None, "word " * 3000, "auto"),
                                      "context is 2048 (text_config.max_position_embeddings)"),
        "unknown budget": ((example.name, None, example.question, "999"), "Unknown budget 999"),
        "budget that is no number": ((example.name, None, example.question, "lots"), "Unknown budget 'lots'"),
    }
    for case, (args, message) in cases.items():
        with pytest.raises(AppError, match=message.replace("(", r"\(").replace(")", r"\)")):
            client.predict(*args, api_name="/ask")
        answer, _, tokens, _, _ = client.predict(example.name, None, example.question, "auto", api_name="/ask")
        assert (answer, tokens) == expected(served, example), f"the app still answers after: {case}"


def test_bad_input_in_the_browser_shows_the_error_then_answers(served, browser, tmp_path):
    examples = served["examples"]
    open_app(browser, served["url"])
    choose_example(browser, examples[1])
    type_question(browser, "")
    css(browser, "#ask").click()
    wait_for_text(browser, "The conversation has no text", "the empty-question error was not shown")

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    css(browser, "#upload input[type=file]").send_keys(str(broken))
    wait_for_text(browser, "Image 0 is not a readable image file", "the unreadable-upload error was not shown")
    assert "Traceback" not in page_text(browser)

    choose_example(browser, examples[2])  # selecting an example drops the broken upload
    assert ask_and_wait_for_answer(browser) == expected(served, examples[2])[0], "a good request after errors works"
