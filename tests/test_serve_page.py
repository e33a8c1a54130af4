"""The page of ``tinyasr serve`` in a real browser: Debian's Chromium, headless, driven by Playwright, with
a WAV file as the microphone.  The page must show the bundled sample's digits, from the microphone and from
a file upload, and the test leaves a screenshot in docs/serve-page.png.

Playwright drives the system Chromium (``executable_path``); it never downloads a browser.  Set
``TINYASR_CHROMIUM`` to use another binary.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("websockets")
sync_api = pytest.importorskip("playwright.sync_api")

from tinyasr import Recognizer  # noqa: E402
from tinyasr.serve.server import ServeConfig, ServerThread  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tinyasr" / "models" / "sample_digits.wav"
SCREENSHOT = ROOT / "docs" / "serve-page.png"
LEAD_IN = 0.5  # seconds of silence before the speech in the fake microphone's file


def chromium_path():
    for candidate in (os.environ.get("TINYASR_CHROMIUM"), "chromium", "chromium-browser"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")


def test_page_transcribes_the_microphone_and_an_uploaded_file(tmp_path):
    executable = chromium_path()
    samples, rate = soundfile.read(SAMPLE, dtype="int16")
    microphone = tmp_path / "microphone.wav"  # the sample, then silence long enough for an endpoint
    soundfile.write(microphone, np.concatenate([np.zeros(int(LEAD_IN * rate), np.int16), samples,
                                                np.zeros(3 * rate, np.int16)]), rate, subtype="PCM_16")
    recognizer = Recognizer()
    offline = recognizer.transcribe(SAMPLE)

    with ServerThread(recognizer, ServeConfig(port=0)) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 560})
            errors = []
            page.on("pageerror", lambda error: errors.append(error))
            page.goto(server.page_url)
            page.click("#start")
            page.wait_for_selector("#finals li", timeout=30_000)
            first = page.locator("#finals li").first
            assert first.locator(".text").inner_text() == offline.text
            words = first.locator(".words").inner_text().split()
            assert words[0::2] == [w.text for w in offline.words]
            start = float(words[1].split("-")[0])  # the first word, in seconds since the page started recording
            assert abs(start - (LEAD_IN + offline.words[0].start)) < 0.3
            page.click("#stop")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')",
                                   timeout=10_000)

            page.set_input_files("#file", str(SAMPLE))
            page.wait_for_function("document.querySelectorAll('#finals li').length === 2", timeout=20_000)
            second = page.locator("#finals li").nth(1)
            assert second.locator(".text").inner_text() == offline.text
            assert second.locator(".time").inner_text() == f"[0.00 - {offline.duration:.2f}]"
            page.screenshot(path=str(SCREENSHOT))
            assert not errors, errors
        finally:
            browser.close()
