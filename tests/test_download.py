"""`tinyasr download`: resumable, verified downloads from a local HTTP server, conversion and the cache.

The server is a thread on 127.0.0.1 serving the random-weight NeMo archive; it
honours Range requests and can answer 500, cut a transfer short or ignore Range.
No outside network is used.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("yaml")

from tinyasr_convert.download import REGISTRY, DownloadError, add_arguments, download, fetch_model, run  # noqa: E402
from tinyasr.format.container import read_model  # noqa: E402
from _paths import SHARED_DIR  # noqa: E402

SHARED = SHARED_DIR
ARCHIVE = SHARED / "models" / "nemo-random" / "quartznet_5x5" / "model.nemo"
pytestmark = pytest.mark.skipif(not ARCHIVE.exists(), reason="shared NeMo archive not available")


class _Server:
    """Serves {path: bytes}.  ``mode``: "normal", "error" (HTTP 500), "truncate" (half the body, then close),
    "ignore_range" (always the whole file with 200).  ``requests`` records (path, Range header)."""

    def __init__(self, files):
        self.files, self.mode, self.requests = files, "normal", []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    return self.send_error(404)
                if server.mode == "error":
                    return self.send_error(500, "test failure")
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                start = int(match.group(1)) if match and server.mode != "ignore_range" else 0
                if start >= len(data) > 0 and match:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.mode == "truncate" else body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def payload():
    return ARCHIVE.read_bytes()


@pytest.fixture
def server(payload):
    s = _Server({"/m/model.nemo": payload})
    yield s
    s.close()


def test_download_convert_and_cache(server, payload, tmp_path, monkeypatch):
    from tinyasr.model_cache import resolve_model_path

    monkeypatch.setenv("TINYASR_HOME", str(tmp_path))
    log = io.StringIO()
    path = fetch_model("qn5x5", url=server.url("/m/model.nemo"), stream=log)
    assert path == tmp_path / "models" / "qn5x5.tasr"
    with read_model(path) as model_file:
        assert model_file.manifest["provenance"]["source_sha256"] == hashlib.sha256(payload).hexdigest()
    assert "100%" in log.getvalue()
    assert list((tmp_path / "models" / "downloads").iterdir()) == []  # the archive is dropped after converting
    assert resolve_model_path("qn5x5") == path  # Recognizer("qn5x5") finds it
    before = len(server.requests)
    assert fetch_model("qn5x5", url=server.url("/m/model.nemo"), stream=log) == path
    assert len(server.requests) == before and "using the cached" in log.getvalue()


def test_resume_from_partial_file(server, payload, tmp_path):
    dest = tmp_path / "model.nemo"
    (tmp_path / "model.nemo.part").write_bytes(payload[:1000])
    download(server.url("/m/model.nemo"), dest, sha256=hashlib.sha256(payload).hexdigest(), stream=io.StringIO())
    assert server.requests == [("/m/model.nemo", "bytes=1000-")]
    assert dest.read_bytes() == payload and not (tmp_path / "model.nemo.part").exists()


def test_truncated_transfer_keeps_part_and_resumes(server, payload, tmp_path):
    dest = tmp_path / "model.nemo"
    server.mode = "truncate"
    with pytest.raises(DownloadError, match=r"model\.nemo: .*(broke off|got \d+ of \d+ bytes).*resume"):
        download(server.url("/m/model.nemo"), dest, stream=io.StringIO())
    part = tmp_path / "model.nemo.part"
    assert 0 < part.stat().st_size < len(payload) and not dest.exists()
    server.mode = "normal"
    download(server.url("/m/model.nemo"), dest, stream=io.StringIO())
    assert server.requests[-1][1] == f"bytes={len(payload) // 2}-"
    assert dest.read_bytes() == payload


def test_complete_part_and_server_ignoring_range(server, payload, tmp_path):
    part = tmp_path / "a.nemo.part"
    part.write_bytes(payload)  # already complete: the server answers 416
    assert download(server.url("/m/model.nemo"), tmp_path / "a.nemo", stream=io.StringIO()).read_bytes() == payload
    server.mode = "ignore_range"
    (tmp_path / "b.nemo.part").write_bytes(b"stale bytes")
    assert download(server.url("/m/model.nemo"), tmp_path / "b.nemo", stream=io.StringIO()).read_bytes() == payload


def test_http_error_is_reported(server, tmp_path):
    server.mode = "error"
    with pytest.raises(DownloadError, match=r"model\.nemo: the server answered HTTP 500"):
        fetch_model("qn", cache_dir=tmp_path, url=server.url("/m/model.nemo"), stream=io.StringIO())
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url("/m/other.nemo"), tmp_path / "x", stream=io.StringIO())
    assert not (tmp_path / "qn.tasr").exists()


def test_sha256_mismatch_deletes_the_file(server, tmp_path):
    with pytest.raises(DownloadError, match=r"sha256 of the download is [0-9a-f]{64}, expected 0{64}; "
                                            r"the file was deleted"):
        download(server.url("/m/model.nemo"), tmp_path / "m.nemo", sha256="0" * 64, stream=io.StringIO())
    assert list(tmp_path.iterdir()) == []


def test_unknown_names_are_refused(tmp_path):
    with pytest.raises(DownloadError, match=r"unknown model 'nope'; known models: .*stt_en_quartznet15x5"):
        fetch_model("nope", cache_dir=tmp_path)
    with pytest.raises(DownloadError, match=r"model name '\.\./evil'"):
        fetch_model("../evil", cache_dir=tmp_path, url="http://127.0.0.1:9/x.nemo")


def test_registry_has_the_english_models_with_sound_entries():
    assert {"stt_en_quartznet15x5", "stt_en_citrinet_256"} <= set(REGISTRY)
    for name, entry in REGISTRY.items():
        assert re.fullmatch(r"[a-z0-9_]+", name) and entry.url.startswith("https://") and entry.url.endswith(".nemo")
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)


@pytest.mark.skipif(not (ARCHIVE.parent.parent / "fastconformer_ctc_small").exists(), reason="shared NeMo archive not available")
def test_a_conformer_registry_entry_downloads_and_converts(tmp_path, monkeypatch):
    """The Conformer entries take the registry path: here with a FastConformer-CTC archive served locally."""
    import dataclasses

    import numpy as np

    from tinyasr import Recognizer

    assert {"stt_en_conformer_ctc_small", "stt_en_fastconformer_ctc_large"} <= set(REGISTRY)
    folder = ARCHIVE.parent.parent / "fastconformer_ctc_small"
    local = _Server({"/v/stt_en_fastconformer_ctc_large.nemo": (folder / "model.nemo").read_bytes()})
    try:
        entry = dataclasses.replace(REGISTRY["stt_en_fastconformer_ctc_large"],
                                    url=local.url("/v/stt_en_fastconformer_ctc_large.nemo"))
        monkeypatch.setitem(REGISTRY, "stt_en_fastconformer_ctc_large", entry)
        path = fetch_model("stt_en_fastconformer_ctc_large", cache_dir=tmp_path, stream=io.StringIO())
    finally:
        local.close()
    vectors = np.load(folder / "test_vectors.npz")
    result = Recognizer(path).transcribe_features(vectors["input.audio_signal"][0])
    assert [t.id for t in result.tokens] == list(vectors["greedy.tokens"])


@pytest.mark.skipif(not (ARCHIVE.parent.parent / "fastconformer_tdt_small").exists(), reason="shared NeMo archive not available")
def test_the_transducer_registry_entry_downloads_and_converts(tmp_path, monkeypatch):
    """The FastConformer-Transducer entry takes the registry path to one transducer .tasr: here with a random-weight
    transducer archive served locally, decoded to NeMo's stored token ids."""
    import dataclasses

    import numpy as np

    from tinyasr import Recognizer

    name = "stt_en_fastconformer_transducer_large"
    folder = ARCHIVE.parent.parent / "fastconformer_tdt_small"
    local = _Server({f"/v/{name}.nemo": (folder / "model.nemo").read_bytes()})
    try:
        monkeypatch.setitem(REGISTRY, name, dataclasses.replace(REGISTRY[name], url=local.url(f"/v/{name}.nemo")))
        path = fetch_model(name, cache_dir=tmp_path, stream=io.StringIO())
    finally:
        local.close()
    vectors = np.load(folder / "test_vectors.npz")
    recognizer = Recognizer(path)
    assert recognizer.decoder.type == "transducer"
    result = recognizer.transcribe_features(vectors["input.audio_signal"][0])
    assert [t.id for t in result.tokens] == list(vectors["greedy.tokens"])


def test_cli_lists_and_fetches(server, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([])) == 0
    assert "stt_en_citrinet_256" in capsys.readouterr().out
    args = parser.parse_args(["qn", "--cache-dir", str(tmp_path), "--url", server.url("/m/model.nemo")])
    assert run(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "qn.tasr")
