"""tinyasr batch: inputs from files, folders and manifests; error rows; resuming; WER / CER against jiwer;
the Dask path on a LocalCluster with a worker killed mid-run."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from _paths import REPO, SHARED_DIR
from tinyasr import batch
from tinyasr.errors import TinyASRError

RECORDINGS = SHARED_DIR / "audio" / "fsdd" / "recordings"
DIGITS = "zero one two three four five six seven eight nine".split()
SAMPLE = REPO / "tinyasr" / "models" / "sample_digits.wav"
pytestmark = pytest.mark.skipif(not RECORDINGS.is_dir(), reason="shared FSDD recordings not available")


def spoken_digits(folder, count, speaker="jackson"):
    """``count`` FSDD recordings copied into ``folder``; {path: reference text}."""
    folder.mkdir(parents=True, exist_ok=True)
    references = {}
    for digit in range(10):
        for take in range(-(-count // 10)):
            if len(references) == count:
                return references
            name = f"{digit}_{speaker}_{take}.wav"
            shutil.copy(RECORDINGS / name, folder / name)
            references[str(folder / name)] = DIGITS[digit]
    return references


def test_collect_files_folders_and_manifests(tmp_path):
    references = spoken_digits(tmp_path / "audio" / "nested", 3)
    (tmp_path / "audio" / "notes.txt").write_text("not audio")
    manifest = tmp_path / "manifest.jsonl"
    first = sorted(references)[0]
    manifest.write_text(json.dumps({"audio_filepath": "audio/nested/" + os.path.basename(first), "text": "zero"})
                        + "\n\n" + json.dumps({"audio_filepath": "/abs/x.wav", "duration": 1.0}) + "\n")
    items = batch.collect([manifest, tmp_path / "audio", SAMPLE])
    assert [i.audio_filepath for i in items] == [first, "/abs/x.wav", *sorted(references)[1:], str(SAMPLE)]
    assert items[0].reference == "zero" and items[1].reference is None
    manifest.write_text('{"audio_filepath": 3}\n')
    with pytest.raises(TinyASRError, match="manifest.jsonl: line 1: needs an 'audio_filepath' string"):
        batch.collect([manifest])
    manifest.write_text("{oops\n")
    with pytest.raises(TinyASRError, match="line 1: not JSON"):
        batch.collect([manifest])


def test_error_rows_resume_and_retry(tmp_path):
    spoken_digits(tmp_path / "audio", 4)
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF not really")
    output = tmp_path / "out" / "results.jsonl"
    counted = []
    summary = batch.run([tmp_path / "audio", tmp_path / "missing.wav"], output, progress=counted.append)
    assert (summary.transcribed, summary.skipped, summary.failed) == (4, 0, 2)
    assert sum(counted) == 6
    rows = batch.read_rows(output)
    errors = {os.path.basename(r["audio_filepath"]): r["error"] for r in rows if "error" in r}
    assert set(errors) == {"broken.wav", "missing.wav"} and "missing.wav" in errors["missing.wav"]
    assert all("words" in r and "tokens" not in r for r in rows if "error" not in r)

    # a run killed while writing leaves half a line: it is cut off and that file redone
    text = output.read_text()
    lines = text.splitlines(keepends=True)
    output.write_text("".join(lines[:2]) + lines[2][:15])
    summary = batch.run([tmp_path / "audio", tmp_path / "missing.wav"], output)
    assert (summary.transcribed + summary.failed, summary.skipped) == (4, 2)
    again = batch.read_rows(output)
    assert sorted(r["audio_filepath"] for r in again) == sorted(r["audio_filepath"] for r in rows)

    summary = batch.run([tmp_path / "audio", tmp_path / "missing.wav"], output, retry_errors=True)
    assert (summary.transcribed, summary.skipped, summary.failed) == (0, 4, 2)


def test_error_rates_match_jiwer():
    jiwer = pytest.importorskip("jiwer")
    rng = np.random.default_rng(0)
    words = ["a", "bb", "ccc", "d", "ee"]
    rows, refs, hyps = [], [], []
    for i in range(40):
        ref = " ".join(rng.choice(words, size=rng.integers(1, 8)))
        hyp = " ".join(rng.choice(words, size=rng.integers(0, 8)))
        rows.append({"audio_filepath": f"{i}.wav", "reference": ref.upper(), "text": hyp})
        refs.append(ref)
        hyps.append(hyp)
    rates = batch.error_rates(rows)
    assert rates["references"] == 40
    assert rates["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert rates["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert batch.error_rates([{"audio_filepath": "x"}]) == {}


def test_manifest_references_give_wer(tmp_path):
    references = spoken_digits(tmp_path / "audio", 10)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": p, "text": t}) + "\n" for p, t in references.items()))
    summary = batch.run([manifest], tmp_path / "results.jsonl")
    rows = batch.read_rows(tmp_path / "results.jsonl")
    edits = sum(batch.edit_distance(r["reference"].split(), r.get("text", "").split()) for r in rows)
    assert summary.references == 10 and summary.wer == pytest.approx(edits / 10)


def test_batch_command(tmp_path):
    spoken_digits(tmp_path / "audio", 2)
    output = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "tinyasr", "batch", str(tmp_path / "audio"), str(tmp_path / "nope.wav"),
               "--output", str(output), "--beam", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # one file failed; the others ran
    assert json.loads(done.stderr.splitlines()[-1]) == {
        "transcribed": 2, "skipped": 0, "failed": 1, "wer": None, "cer": None, "references": 0}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert json.loads(done.stderr.splitlines()[-1])["skipped"] == 3
    done = subprocess.run([*command[:5], "--output", str(output), "--scheduler", "tcp://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "cannot reach the Dask scheduler tcp://127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_dask_local_cluster_survives_a_killed_worker(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    references = spoken_digits(tmp_path / "audio", 40)
    local = batch.run([tmp_path / "audio"], tmp_path / "local.jsonl")
    assert local.transcribed == 40
    expected = {r["audio_filepath"]: r.get("text") for r in batch.read_rows(tmp_path / "local.jsonl")}

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        killed = []

        def kill_one_worker(_rows):
            if not killed:
                os.kill(pids[0], signal.SIGKILL)  # its chunks in flight are redone on the other worker
                killed.append(pids[0])

        summary = batch.run([tmp_path / "audio"], tmp_path / "dask.jsonl", client=client, chunk_size=2,
                            progress=kill_one_worker)
        assert killed
        # a worker process builds its Recognizer once and keeps it
        assert sorted(client.run(lambda: len(batch._RECOGNIZERS)).values())[-1] == 1  # a restarted one may have 0
    rows = batch.read_rows(tmp_path / "dask.jsonl")
    assert sorted(r["audio_filepath"] for r in rows) == sorted(references)  # none lost, none twice
    assert summary.transcribed == 40 and summary.failed == 0
    assert {r["audio_filepath"]: r.get("text") for r in rows} == expected  # the same results as in this process
