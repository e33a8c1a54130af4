"""``tinyasr serve``: the protocol against offline recognition, the limits, bad clients, shutdown, the CLI.

Every server listens on a free port of 127.0.0.1.  Reference transcripts come from the offline path
(``Recognizer.transcribe`` on the whole signal), not from the streaming code the server runs.
"""

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from tinyasr import Recognizer  # noqa: E402
from tinyasr.serve import session as session_module  # noqa: E402
from tinyasr.serve.client import ServerError, stream_chunks, stream_file, transcribe_file  # noqa: E402
from tinyasr.serve.protocol import Limits  # noqa: E402
from tinyasr.serve.server import ServeConfig, ServerThread, SpeechServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tinyasr" / "models" / "sample_digits.wav"
LIMITS = Limits(max_sessions=32, max_message_bytes=64 * 1024, max_session_seconds=12.0, max_file_bytes=512 * 1024,
                idle_timeout=1.0, send_timeout=2.0, open_timeout=1.0, close_timeout=1.0)
ALLOWED_ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def recognizer():
    return Recognizer()


@pytest.fixture(scope="module")
def sample():
    samples, rate = soundfile.read(SAMPLE, dtype="int16")
    return samples, rate


@pytest.fixture(scope="module")
def running(recognizer):
    config = ServeConfig(port=0, allow_origins=(ALLOWED_ORIGIN,), limits=LIMITS)
    with ServerThread(recognizer, config, grace=1.0) as running:
        yield running


def chunks(samples, rate, ms=100):
    step = rate * ms // 1000
    return [(samples[i:i + step], rate) for i in range(0, len(samples), step)]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def wait_for_sessions(server, count, timeout=5.0):
    deadline = time.monotonic() + timeout
    while server.sessions != count and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.sessions


# ---------------------------------------------------------------------------
# The protocol against offline recognition


def test_streamed_final_equals_offline_with_word_times(running, recognizer, sample):
    offline = recognizer.transcribe(SAMPLE)
    assert offline.text == (ROOT / "tinyasr" / "models" / "sample_digits.txt").read_text().strip()
    events = []
    finals = run(stream_chunks(running.url, chunks(*sample), on_event=events.append))
    assert [f["text"] for f in finals] == [offline.text]
    words = finals[0]["words"]
    assert [w["text"] for w in words] == [w.text for w in offline.words]
    # within one 20 ms output frame of offline (the stream normalises with fixed statistics, offline per
    # utterance), and exactly what OnlineStream itself gives
    np.testing.assert_allclose([(w["start"], w["end"]) for w in words],
                               [(w.start, w.end) for w in offline.words], atol=0.02 + 1e-6)
    direct = recognizer.stream()
    direct.accept_waveform(*sample)
    assert [(w["start"], w["end"]) for w in words] == [(round(w.start, 4), round(w.end, 4))
                                                       for w in direct.finalize().words]
    assert finals[0]["end"] == pytest.approx(len(sample[0]) / sample[1], abs=1e-3)
    kinds = [e["type"] for e in events]
    assert kinds[-2:] == ["final", "done"] and events[-1]["duration"] == pytest.approx(4.272, abs=1e-3)
    partials = [e["text"] for e in events if e["type"] == "partial"]
    assert len(partials) >= 3 and all(offline.text.startswith(p) for p in partials)  # growing text


def test_any_rate_is_resampled_by_the_server(running, recognizer, sample):
    samples = np.round(resample_poly(sample[0].astype(np.float64), 441, 160)).clip(-32768, 32767).astype(np.int16)
    finals = run(stream_chunks(running.url, chunks(samples, 44100, ms=37)))
    assert " ".join(f["text"] for f in finals) == recognizer.transcribe(samples, sample_rate=44100).text


def test_endpoint_splits_utterances_with_times_from_the_session_start(running, recognizer, sample):
    samples, rate = sample
    gap = np.zeros(3 * rate, np.int16)  # longer than the 1.2 s of silence that ends an utterance
    events = []
    finals = run(stream_chunks(running.url, chunks(np.concatenate([samples, gap, samples]), rate),
                               on_event=events.append))
    offline = recognizer.transcribe(SAMPLE)
    assert [f["text"] for f in finals] == [offline.text, offline.text]
    assert finals[0]["endpoint"] and not finals[1]["endpoint"]
    assert [e["type"] for e in events].count("endpoint") >= 1
    shift = finals[1]["start"]
    assert finals[0]["end"] == pytest.approx(shift)
    first_word = finals[1]["words"][0]["start"] - (len(samples) + len(gap)) / rate
    assert first_word == pytest.approx(offline.words[0].start, abs=0.02 + 1e-6)  # one output frame


def test_file_mode_returns_the_offline_transcript(running, recognizer):
    final = run(transcribe_file(running.url, SAMPLE, piece_bytes=10_000))
    offline = recognizer.transcribe(SAMPLE)
    assert final["text"] == offline.text
    assert final["end"] == pytest.approx(offline.duration, abs=1e-4)
    assert [(w["text"], w["start"]) for w in final["words"]] == [(w.text, round(w.start, 4)) for w in offline.words]


def test_compute_runs_in_the_worker_pool_not_the_event_loop(running, sample, monkeypatch):
    threads = set()
    accept = session_module.StreamSession.accept

    def recording_accept(self, messages):
        import threading

        threads.add(threading.current_thread().name)
        return accept(self, messages)

    monkeypatch.setattr(session_module.StreamSession, "accept", recording_accept)
    run(stream_chunks(running.url, chunks(*sample)[:5]))
    assert threads and all(name.startswith("tinyasr-serve_") for name in threads), threads


def test_a_busy_session_takes_its_waiting_messages_in_one_call_and_reads_no_further(running, recognizer,
                                                                                     sample, monkeypatch):
    """Backpressure: while a call computes, at most READ_AHEAD messages wait, and they go in together."""
    from tinyasr.serve.server import READ_AHEAD

    batches = []
    accept = session_module.StreamSession.accept

    def slow_accept(self, messages):
        batches.append(len(messages))
        time.sleep(0.05)  # a server far behind: 50 ms for every call
        return accept(self, messages)

    monkeypatch.setattr(session_module.StreamSession, "accept", slow_accept)
    finals = run(stream_chunks(running.url, chunks(*sample, ms=20)))  # 214 messages, sent at once
    assert [f["text"] for f in finals] == [recognizer.transcribe(SAMPLE).text]
    assert sum(batches) == len(chunks(*sample, ms=20)) and max(batches) > 1
    assert max(batches) <= READ_AHEAD


# ---------------------------------------------------------------------------
# Bad clients: each kind and its documented outcome (docs/serve.md), as (error code, close code)


async def scripted(url, messages, *, origin=None):
    """Send ``messages`` (str / bytes, or a number = seconds to wait), then read until the server closes."""
    events = []
    async with connect(url, origin=origin, open_timeout=5) as ws:
        for message in messages:
            if isinstance(message, (int, float)):
                await asyncio.sleep(message)
                continue
            try:
                await ws.send(message)
            except ConnectionClosed:
                break
        try:
            async for text in ws:
                events.append(json.loads(text))
        except ConnectionClosed:
            pass
        errors = [e["code"] for e in events if e["type"] == "error"]
        return (errors[0] if errors else None), ws.close_code


def frame(opcode, payload, mask=b"\x01\x02\x03\x04"):
    """One masked client frame (RFC 6455), for the clients websockets will not impersonate."""
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data):
    """(error code, close code) from the server's raw frames."""
    error, close, offset = None, None, 0
    while offset + 2 <= len(data):
        opcode, size = data[offset] & 0x0F, data[offset + 1] & 0x7F
        offset += 2
        if size == 126:
            size, offset = int.from_bytes(data[offset:offset + 2], "big"), offset + 2
        payload, offset = data[offset:offset + size], offset + size
        if opcode == 1:
            error = error or json.loads(payload).get("code")
        elif opcode == 8:
            close = int.from_bytes(payload[:2], "big")
    return error, close


async def raw_client(port, after_handshake=True, trickle=False):
    """A TCP client: handshake only (or not even that), then a frame trickled a few bytes at a time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if after_handshake:
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade"
                         f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
            writer.write(frame(1, json.dumps({"type": "start", "sample_rate": 16000}).encode()))
        if trickle:  # a 1000-byte audio frame sent 10 bytes every 0.2 s: never complete within idle_timeout
            writer.write(bytes([0x82, 0x80 | 126]) + (1000).to_bytes(2, "big") + b"\x01\x02\x03\x04")

            async def trickle_bytes():
                for _ in range(25):
                    writer.write(b"\x00" * 10)
                    await asyncio.sleep(0.2)

            trickling = asyncio.ensure_future(trickle_bytes())
        try:
            data = await asyncio.wait_for(reader.read(), 10)  # until the server closes the TCP connection
        finally:
            if trickle:
                trickling.cancel()
        return server_frames(data) + (data,)
    finally:
        writer.close()


START = json.dumps({"type": "start", "sample_rate": 16000})
PCM = np.zeros(1600, np.int16).tobytes()
SCRIPTS = {  # kind -> (messages, expected (error code, close code))
    "binary before start": ([PCM], ("bad_message", 1008)),
    "text that is not JSON": (["hello"], ("bad_message", 1008)),
    "JSON that is not an object": (["[1, 2]"], ("bad_message", 1008)),
    "first message not start": ([json.dumps({"type": "hello"})], ("bad_message", 1008)),
    "sample rate not a number": ([json.dumps({"type": "start", "sample_rate": "fast"})], ("bad_message", 1008)),
    "sample rate out of range": ([json.dumps({"type": "start", "sample_rate": 1_000_000})], ("bad_message", 1008)),
    "unknown mode": ([json.dumps({"type": "start", "mode": "video"})], ("bad_message", 1008)),
    "PCM of odd length": ([START, PCM + b"\x00"], ("bad_audio", 1008)),
    "unknown control message": ([START, PCM, json.dumps({"type": "pause"})], ("bad_message", 1008)),
    "second start": ([START, START], ("bad_message", 1008)),
    "oversized message": ([START, bytes(LIMITS.max_message_bytes + 2)], (None, 1009)),
    "never sends start": ([], ("idle_timeout", 1008)),
    "stops sending": ([START, PCM], ("idle_timeout", 1008)),
    "session too long": ([START] + [bytes(32000)] * 13, ("limit", 1008)),
    "file too big": ([json.dumps({"type": "start", "mode": "file"})] + [bytes(60_000)] * 9, ("limit", 1008)),
    "file that is not audio": ([json.dumps({"type": "start", "mode": "file"}), b"RIFF" + bytes(500),
                                json.dumps({"type": "end"})], ("bad_audio", 1008)),
    "file mode without a file": ([json.dumps({"type": "start", "mode": "file"}), json.dumps({"type": "end"})],
                                 ("bad_audio", 1008)),
    "hotwords on a greedy server": ([json.dumps({"type": "start", "sample_rate": 16000, "hotwords": ["nine"]})],
                                    ("bad_message", 1008)),
    "hotwords not a list": ([json.dumps({"type": "start", "sample_rate": 16000, "hotwords": "nine"})],
                            ("bad_message", 1008)),
    "too many hotwords": ([json.dumps({"type": "start", "sample_rate": 16000, "hotwords": ["a"] * 101})],
                          ("bad_message", 1008)),
    "hotword too long": ([json.dumps({"type": "start", "sample_rate": 16000, "hotwords": ["a" * 101]})],
                         ("bad_message", 1008)),
    "hotword boost too large": ([json.dumps({"type": "start", "sample_rate": 16000, "hotwords": ["nine:1e9"]})],
                                ("bad_message", 1008)),
    "hotwords in file mode": ([json.dumps({"type": "start", "mode": "file", "hotwords": ["nine"]})],
                              ("bad_message", 1008)),
}


@pytest.mark.parametrize("kind", SCRIPTS)
def test_bad_client_gets_its_documented_outcome(running, kind):
    messages, expected = SCRIPTS[kind]
    assert run(scripted(running.url, messages)) == expected
    assert wait_for_sessions(running.server, 0) == 0


def test_frame_trickled_byte_by_byte_times_out(running):
    error, close, _ = run(raw_client(running.server.port, trickle=True))
    assert (error, close) == ("idle_timeout", 1008)


def test_handshake_never_finished_is_dropped(running):
    started = time.monotonic()
    *_, data = run(raw_client(running.server.port, after_handshake=False))
    assert data == b"" and time.monotonic() - started < LIMITS.open_timeout + 2


def test_vanished_client_ends_its_session(running, sample):
    async def vanish():
        async with connect(running.url) as ws:
            await ws.send(START)
            await ws.recv()
            for piece, _ in chunks(*sample)[:10]:
                await ws.send(piece.tobytes())
            assert running.server.sessions == 1
            ws.transport.abort()  # no close frame, no FIN handshake: a pulled cable / killed tab

    run(vanish())
    assert wait_for_sessions(running.server, 0) == 0


def test_origins(running):
    async def status(origin):
        try:
            async with connect(running.url, origin=origin) as ws:
                await ws.close()
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    page_origin = f"http://127.0.0.1:{running.server.port}"
    assert run(status(None)) == 101  # not a browser
    assert run(status(page_origin)) == 101  # the server's own page
    assert run(status(ALLOWED_ORIGIN)) == 101  # --allow-origin
    assert run(status("https://evil.example")) == 403


def test_other_host_names_are_refused(running):
    """DNS rebinding: a page on evil.example, resolved to 127.0.0.1, has origin == host and must still fail."""
    import http.client

    port = running.server.port
    for path, headers in [("/", {}), ("/ws", {"Upgrade": "websocket", "Connection": "Upgrade", "Origin":
                                             f"http://evil.example:{port}", "Sec-WebSocket-Version": "13",
                                             "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()})]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.putrequest("GET", path, skip_host=True)
        for name, value in {"Host": f"evil.example:{port}", **headers}.items():
            connection.putheader(name, value)
        connection.endheaders()
        assert connection.getresponse().status == 403
        connection.close()
    with urllib.request.urlopen(f"http://localhost:{port}/") as response:  # the loopback names still work
        assert response.status == 200


def test_page_and_http_paths(running):
    with urllib.request.urlopen(running.page_url) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert b'src="app.js"' in response.read()
    for name in ("app.js", "capture-worklet.js"):
        with urllib.request.urlopen(running.page_url + name) as response:
            assert response.headers["Content-Type"].startswith("text/javascript")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(running.page_url + "secret")
    assert missing.value.code == 404


def test_too_many_sessions_are_refused_and_the_server_recovers(recognizer):
    async def scenario():
        server = SpeechServer(recognizer, ServeConfig(port=0, limits=Limits(max_sessions=2, idle_timeout=5.0)))
        await server.start()
        url = f"ws://127.0.0.1:{server.port}/ws"
        try:
            first, second = await connect(url), await connect(url)
            for ws in (first, second):
                await ws.send(START)
                assert json.loads(await ws.recv())["type"] == "ready"
            refused = await scripted(url, [START])
            await first.close()
            await asyncio.sleep(0.1)
            await second.send(json.dumps({"type": "end"}))
            accepted = await scripted(url, [START, json.dumps({"type": "end"})])
            await second.close()
            return refused, accepted
        finally:
            await server.shutdown(1.0)

    assert run(scenario()) == (("busy", 1013), (None, 1000))


def test_bad_clients_leave_other_sessions_unaffected(running, recognizer, sample):
    """All the bad kinds at once, beside two good sessions at different rates."""
    samples, rate = sample
    fast = np.round(resample_poly(samples.astype(np.float64), 3, 1)).clip(-32768, 32767).astype(np.int16)

    async def scenario():
        good = [stream_chunks(running.url, chunks(samples, rate)), stream_chunks(running.url, chunks(fast, 3 * rate))]
        bad = [scripted(running.url, messages) for messages, _ in SCRIPTS.values()]
        bad += [raw_client(running.server.port, trickle=True), raw_client(running.server.port, after_handshake=False)]
        return await asyncio.gather(*good, *bad)

    results = run(scenario())
    good, bad = results[:2], results[2:]
    assert [f["text"] for f in good[0]] == [recognizer.transcribe(SAMPLE).text]
    assert " ".join(f["text"] for f in good[1]) == recognizer.transcribe(fast, sample_rate=3 * rate).text
    assert bad[:len(SCRIPTS)] == [expected for _, expected in SCRIPTS.values()]
    assert bad[-2][:2] == ("idle_timeout", 1008) and bad[-1][-1] == b""
    assert wait_for_sessions(running.server, 0) == 0


# ---------------------------------------------------------------------------
# Shutdown and the command


def test_shutdown_finishes_open_sessions(recognizer, sample):
    """While stopping: no new sessions; a session that ends within the grace period gets its result as
    usual; one still open after it gets the final of what it sent and a 1001 close, one that never
    started a "shutdown" error and 1001."""
    samples, rate = sample
    half = len(samples) // 2

    async def opened(url, audio):
        ws = await connect(url)
        await ws.send(START)
        await ws.recv()
        for piece, _ in chunks(audio, rate):
            await ws.send(piece.tobytes())
        return ws

    async def scenario():
        server = SpeechServer(recognizer, ServeConfig(port=0, limits=Limits(idle_timeout=30.0)))
        await server.start()
        url = f"ws://127.0.0.1:{server.port}/ws"
        finishing, lingering = await opened(url, samples[:half]), await opened(url, samples[:half])
        silent = await connect(url)  # connected, no start yet
        stopping = asyncio.ensure_future(server.shutdown(grace=1.5))
        await asyncio.sleep(0.2)
        with pytest.raises(OSError):  # no new sessions while stopping
            await connect(url, open_timeout=2)
        for piece, _ in chunks(samples[half:], rate):  # the rest, within the grace period
            await finishing.send(piece.tobytes())
        await finishing.send(json.dumps({"type": "end"}))
        finished = [json.loads(m) async for m in finishing]
        assert not stopping.done()
        cut = [json.loads(m) async for m in lingering]
        told = [json.loads(m) async for m in silent]
        await stopping
        return finished, finishing.close_code, cut, lingering.close_code, told, silent.close_code

    finished, finished_code, cut, cut_code, told, told_code = run(scenario())
    assert [e.get("code") for e in told] == ["shutdown"] and told_code == 1001
    assert [e["text"] for e in finished if e["type"] == "final"] == [recognizer.transcribe(SAMPLE).text]
    assert finished[-1]["type"] == "done" and finished_code == 1000
    partial_text = recognizer.transcribe(samples[:half], sample_rate=rate).text
    assert [e["text"] for e in cut if e["type"] == "final"] == [partial_text]
    assert cut[-1]["type"] == "done" and cut_code == 1001


def test_serve_command_streams_and_stops_cleanly_on_sigterm():
    process = subprocess.Popen([sys.executable, "-m", "tinyasr", "serve", "--port", "0"], cwd=ROOT,
                               stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stderr.readline()
        while banner and not banner.startswith("tinyasr serve:"):  # e.g. a warning printed first
            banner = process.stderr.readline()
        assert banner, "no banner"
        url = banner.split(" and ")[1].split(";")[0]
        assert url.startswith("ws://127.0.0.1:")
        finals = run(stream_file(url, SAMPLE))
        assert [f["text"] for f in finals] == [Recognizer().transcribe(SAMPLE).text]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "stopping" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_command_names_the_missing_extra():
    code = ("import importlib.abc, sys\n"
            "class Absent(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'websockets': raise ModuleNotFoundError(name=name)\n"
            "sys.meta_path.insert(0, Absent())\n"
            "from tinyasr.cli.main import main\n"
            "sys.exit(main(['serve']))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == ("tinyasr: 'tinyasr serve' needs the serve extra (websockets is missing): "
                                   "pip install 'tinyasr[serve]'")


def test_python_client_reports_server_errors(running):
    with pytest.raises(ServerError, match="limit"):
        run(stream_chunks(running.url, [(np.zeros(16000, np.int16), 16000)] * 13))


def test_beam_search_server_with_session_hotwords(sample):
    """A server started with beam search (as ``tinyasr serve --beam``) streams what OnlineStream's beam search
    gives; a session's own hotwords (its start message) change its text and no other session's."""
    from tinyasr import BeamSearch

    beam = Recognizer().with_decoding(BeamSearch(beam=4))
    expected = {}
    for hotwords in ((), (("four", 15.0),)):  # strong enough to replace digits: shows the words are used
        direct = beam.stream(hotwords=hotwords)
        direct.accept_waveform(*sample)
        expected[hotwords] = direct.finalize().text
    assert expected[()] == beam.transcribe(SAMPLE).text
    assert expected[()].count("four") < expected[(("four", 15.0),)].count("four")
    with ServerThread(beam, ServeConfig(port=0, limits=LIMITS), grace=1.0) as server:
        async def both():
            return await asyncio.gather(stream_chunks(server.url, chunks(*sample), hotwords=["four:15"]),
                                        stream_chunks(server.url, chunks(*sample)))
        boosted, plain = run(both())
    assert [f["text"] for f in boosted] == [expected[(("four", 15.0),)]]
    assert [f["text"] for f in plain] == [expected[()]]


def test_serve_command_takes_the_decoding_options(tmp_path, capsys):
    """``tinyasr serve --beam/--lm/--hotword`` build the server's decoding (a bad LM fails at start, named)."""
    from tinyasr.cli.main import main

    assert main(["serve", "--beam", "4", "--lm", str(tmp_path / "absent.arpa"), "--hotword", "nine:2"]) == 3
    assert f"{tmp_path / 'absent.arpa'}: cannot read the language model" in capsys.readouterr().err
