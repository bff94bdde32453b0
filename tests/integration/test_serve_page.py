"""The web page in headless Chromium against `python -m pipeline serve` run as a user runs it:
upload an image, read the answer and the overlay, ask a follow-up in the chat, then Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACT = ROOT / "runs" / "test-artifacts" / "serve_page.png"
PAGE_TOKEN = "page-test-token-0123456789abcdef"
"""The service runs with a token (ANOMALYGPT_TOKEN): the page asks for it once."""
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


def first_line(process: subprocess.Popen, timeout: float) -> str:
    """The process's first stdout line, or "" if none comes within ``timeout`` seconds."""
    import select

    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else ""


@pytest.fixture(scope="module")
def served(tiny_checkpoint, sample_data_root, tmp_path_factory):
    """`python -m pipeline serve` in its own process (its own local Ray); stopped with SIGINT."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    feedback = tmp_path_factory.mktemp("feedback") / "feedback"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "ANOMALYGPT_TOKEN": PAGE_TOKEN}
    command = [
        sys.executable, "-m", "pipeline", "serve", "--model", str(tiny_checkpoint), "--port", str(port),
        "--device", "cpu", "--references-dir", str(sample_data_root), "--feedback-dir", str(feedback),
    ]  # fmt: skip
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=sink, text=True, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        line = first_line(process, timeout=240)  # "serving ... at URL", printed once it answers
        assert url in line, f"no URL printed: {line!r}\n{log.read_text()[-3000:]}"
        yield url, process, feedback
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def check_region_boxes(browser, wait, url: str, image: Path) -> None:
    """A category without normal images (the decoder's map: above 0.5 for this untrained model):
    each region of the answer is a box over the image panel of the overlay, where its box in the
    image's pixels says, labelled with its number and cell, and a line under the verdict."""
    import requests
    from PIL import Image
    from selenium.webdriver.common.by import By

    fields = {"category": "part", "map": "none", "generate": "false"}
    files = [("image", (image.name, image.read_bytes()))]
    auth = {"Authorization": f"Bearer {PAGE_TOKEN}"}
    regions = requests.post(f"{url}v1/inspect", files=files, data=fields, headers=auth, timeout=120).json()[
        "regions"
    ]
    assert regions  # else there is nothing to draw
    category = browser.find_element(By.ID, "category")
    category.clear()
    category.send_keys("part")
    browser.find_element(By.ID, "inspect-button").click()
    wait.until(lambda b: "decoder map" in b.find_element(By.ID, "shots").text)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#boxes .region-box")) == len(regions))
    listed = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#regions li")]
    assert [text.split(":")[0] for text in listed] == [r["position"] for r in regions]
    assert not browser.find_element(By.ID, "regions-none").is_displayed()
    with Image.open(image) as im:
        width, height = im.size
    picture = browser.find_element(By.ID, "overlay").rect
    panel = picture["height"]  # the overlay's image panel is a square as tall as the picture
    boxes = browser.find_elements(By.CSS_SELECTOR, "#boxes .region-box")
    for number, (box, region) in enumerate(zip(boxes, regions, strict=True), start=1):
        assert box.text == f"{number} {region['position']}"
        x0, y0, x1, y1 = region["box"]
        drawn = box.rect
        assert drawn["x"] == pytest.approx(picture["x"] + panel * x0 / width, abs=2)
        assert drawn["y"] == pytest.approx(picture["y"] + panel * y0 / height, abs=2)
        assert drawn["width"] == pytest.approx(panel * (x1 - x0) / width, abs=3)
        assert drawn["height"] == pytest.approx(panel * (y1 - y0) / height, abs=3)


def check_marking_a_false_alarm_normal(browser, wait, sample_data_root, tmp_path, feedback) -> None:
    """A monochrome photo of normal grass, which the tiny model flags: Mark normal keeps it in the
    feedback folder and the page's fresh inspection calls it normal (its bank now holds it)."""
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By

    rgb = np.asarray(Image.open(sample_data_root / "grass" / "test" / "good" / "001.png").convert("RGB"))
    grey = tmp_path / "grey_grass.png"
    Image.fromarray(np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)).save(grey)
    browser.find_element(By.ID, "file-input").send_keys(str(grey))
    category = browser.find_element(By.ID, "category")
    category.clear()
    category.send_keys("grass")
    browser.find_element(By.ID, "inspect-button").click()
    # the part image before it was called anomalous too: wait for this inspection's own answer
    wait.until(lambda b: "memory bank of 6 normal images" in b.find_element(By.ID, "shots").text)
    wait.until(lambda b: b.find_element(By.ID, "inspect-button").is_enabled())
    assert browser.find_element(By.ID, "verdict").text == "Anomalous"
    assert browser.find_element(By.ID, "feedback").is_displayed()
    browser.find_element(By.ID, "feedback-note").send_keys("mono camera")
    browser.find_element(By.ID, "mark-normal").click()
    wait.until(lambda b: b.find_element(By.ID, "verdict").text == "Normal")
    assert "memory bank of 7 normal images" in browser.find_element(By.ID, "shots").text
    kept = list((feedback / "grass" / "train" / "good").iterdir())
    assert [p.read_bytes() for p in kept] == [grey.read_bytes()]
    assert '"note": "mono camera"' in (feedback / "entries.jsonl").read_text()


def test_page_inspects_an_image_and_chats_about_it(served, browser, sample_data_root, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    url, process, feedback = served
    image = sorted((sample_data_root / "coin" / "test").rglob("*.png"))[-1]
    wait = WebDriverWait(browser, 90)
    browser.get(url)
    wait.until(lambda b: "on cpu" in b.find_element(By.ID, "model-text").text)
    # --references-dir offers its categories
    options = browser.find_elements(By.CSS_SELECTOR, "#categories option")
    assert "coin" in {o.get_attribute("value") for o in options}

    browser.find_element(By.ID, "file-input").send_keys(str(image))
    browser.find_element(By.ID, "category").send_keys("coin")
    browser.find_element(By.ID, "inspect-button").click()
    prompt = wait.until(expected_conditions.alert_is_present())  # the first call's 401: the token, once
    assert "token" in prompt.text
    prompt.send_keys(PAGE_TOKEN)
    prompt.accept()
    wait.until(lambda b: b.find_element(By.ID, "answer").text.strip())
    answer = browser.find_element(By.ID, "answer").text
    assert answer and browser.find_element(By.ID, "status").get_attribute("class") != "error"
    overlay = browser.find_element(By.ID, "overlay")
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) >= 256
    assert browser.find_element(By.ID, "verdict").text in ("Anomalous", "Normal")
    assert "memory bank of 6 normal images" in browser.find_element(By.ID, "shots").text
    assert float(browser.find_element(By.ID, "score").text) >= 0.0
    assert browser.find_element(By.ID, "threshold").text == "0.5"
    messages = browser.find_elements(By.CSS_SELECTOR, "#chat-log .msg")
    assert [m.get_attribute("class") for m in messages] == ["msg human", "msg gpt"]
    assert messages[1].text == answer

    browser.find_element(By.ID, "chat-input").send_keys("Where is the anomaly?")
    browser.find_element(By.ID, "chat-send").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#chat-log .msg.gpt:not(.pending)")) == 2)
    texts = [m.text for m in browser.find_elements(By.CSS_SELECTOR, "#chat-log .msg")]
    assert texts[2] == "Where is the anomaly?" and texts[3].strip()
    assert browser.find_element(By.ID, "status").get_attribute("class") != "error"

    check_region_boxes(browser, wait, url, image)
    check_marking_a_false_alarm_normal(browser, wait, sample_data_root, tmp_path, feedback)

    assert not expected_conditions.alert_is_present()(browser)  # asked once: every later call sent it
    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "serve_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)

    process.send_signal(signal.SIGINT)  # Ctrl-C: the application is removed and the command exits 0
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert process.returncode == 0
