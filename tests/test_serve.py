"""`fada serve` in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) through
Selenium drives the page of a tiny fast student; plus the page's error lines and file safety over HTTP.

Install the browser with ``apt-get install -y chromium chromium-driver`` (as `.ci/run` does); without
it the browser cases are skipped with that reason. ``FADA_SCREENSHOT_DIR`` keeps the screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import soundfile as sf
import torch
from PIL import Image

from pipelines.app import generate_for_page
from pipelines.checkpoint import save_checkpoint
from pipelines.distill import build_student_from_teacher
from pipelines.model import FadaModel
from pipelines.model_config import get_preset
from pipelines.pipeline import FadaPipeline

SPEECH_S = 0.6  # 15 frames: 4 clips of the tiny preset's F = 4
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _student(folder: Path) -> Path:
    """A tiny fast student (6 PeRFlow steps × 1 NFE per clip): quick enough for a page round trip."""
    torch.manual_seed(0)
    student = build_student_from_teacher(FadaModel.from_config(get_preset("tiny")), "tokens")
    return save_checkpoint(
        folder / "fast", stage="student", mode="fast", step=0, components=student.components(),
        config={"model": student.config.to_dict(), "train": {"windows": 4}},
    )  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    portrait = folder / "portrait.png"
    Image.fromarray(skimage.data.astronaut()).resize((256, 256)).save(portrait)
    t = np.arange(int(SPEECH_S * 16_000)) / 16_000
    speech = folder / "speech.wav"
    sf.write(speech, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16_000)
    notes = folder / "notes.txt"
    notes.write_text("not an image\n")
    return {"checkpoint": _student(folder), "portrait": portrait, "speech": speech, "notes": notes, "dir": folder}


def test_page_errors_are_the_cli_lines(files, tmp_path):
    pipe = FadaPipeline.from_checkpoint(files["checkpoint"], device="cpu")

    def last(image, audio):
        return list(generate_for_page(pipe, image, audio, 6, 6.5, 2.0, 0, True, tmp_path))[-1]

    assert last(None, str(files["speech"]))[3].startswith("Error: no portrait given")
    assert last(str(files["portrait"]), None)[3].startswith("Error: no speech given")
    error = last(str(files["notes"]), str(files["speech"]))[3]
    assert error.startswith("Error: cannot read portrait notes.txt") and str(files["dir"]) not in error
    video, stats, status, error = last(str(files["portrait"]), str(files["speech"]))
    assert error == "" and Path(video).is_file() and '"frames": 15' in stats and "checkpoint" not in stats


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(files):
    """`fada serve` on the tiny student, as a user starts it; its URL."""
    port = _free_port()
    command = [sys.executable, "-m", "fada_cli.main", "serve", "--checkpoint", str(files["checkpoint"]),
               "--port", str(port), "--device", "cpu", "--max-upload-mb", "2"]  # fmt: skip
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"fada serve did not come up: {process.communicate()[0][-2000:]}")
    yield url
    process.terminate()
    process.wait(timeout=20)


def test_server_files_are_not_readable(server, files):
    for path in (files["checkpoint"] / "fada_checkpoint.json", Path("/etc/passwd"), files["portrait"]):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server}/gradio_api/file={path}", timeout=10)
        assert refused.value.code in (403, 404)


def test_uploads_over_the_limit_are_refused(server, tmp_path):
    """The server was started with --max-upload-mb 2: a 3 MB upload gets 413, a small one goes through."""
    boundary = "fada-test-boundary"

    def upload(size: int) -> int:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.wav"\r\n\r\n'
        body = head.encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        request = urllib.request.Request(f"{server}/gradio_api/upload", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert upload(3 * 2**20) == 413
    assert upload(1_000) == 200


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _upload(driver, elem_id: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    selector = f"#{elem_id} input[type=file]"
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, selector))[0].send_keys(str(path))


def _wait(driver, condition, seconds: float = 45):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.25).until(condition)


def test_browser_generates_a_video_as_long_as_the_speech(server, files, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#fada-portrait input[type=file]"))
    _upload(browser, "fada-portrait", files["portrait"])
    _upload(browser, "fada-speech", files["speech"])
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#fada-speech audio, #fada-speech .waveform-container"))
    browser.find_element(By.ID, "fada-generate").click()
    duration = _wait(
        browser,
        lambda d: d.execute_script(
            "const v = document.querySelector('#fada-video video');"
            "return v && v.readyState >= 1 && isFinite(v.duration) && v.duration > 0 ? v.duration : null;"
        ),
    )
    assert abs(duration - SPEECH_S) < 0.1  # 15 frames at 25 fps, the AAC speech beside them
    assert "done: 15 frames" in browser.find_element(By.ID, "fada-status").text
    assert browser.find_element(By.ID, "fada-error").text == ""
    shots = Path(os.environ.get("FADA_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shots / "fada_serve.png"))
    assert Image.open(shots / "fada_serve.png").size[0] >= 1000


def test_browser_shows_a_text_file_portrait_as_an_error(server, files, browser):
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#fada-portrait input[type=file]"))
    _upload(browser, "fada-portrait", files["notes"])
    _upload(browser, "fada-speech", files["speech"])
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#fada-speech audio, #fada-speech .waveform-container"))
    browser.find_element(By.ID, "fada-generate").click()
    text = _wait(browser, lambda d: d.find_element(By.ID, "fada-error").text or None)
    assert text.startswith("Error: cannot read portrait notes.txt") and text.endswith("pass a PNG or JPEG image.")
    assert not browser.find_elements(By.CSS_SELECTOR, "#fada-video video")
