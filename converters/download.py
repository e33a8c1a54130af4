"""`tinyasr download NAME`: fetch a public NeMo model, verify it, convert it once, cache the .tasr.

Downloads use urllib only.  They go to ``<cache>/downloads/<file>.part`` and
resume from there with an HTTP Range request when a previous attempt stopped;
the file is checked (size, and sha256 when known) before it is renamed, and a
file whose sha256 is wrong is deleted.  The converted model is
``<cache>/NAME.tasr`` with ``<cache>`` = ``$TINYASR_HOME/models`` or
``~/.cache/tinyasr/models`` (the place the Recognizer looks for model names), so
a second call, and ``Recognizer("NAME")``, find it without the network.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

from tinyasr.errors import TinyASRError
from tinyasr.model_cache import cache_dir as default_cache_dir, file_sha256
from tinyasr_convert.nemo import convert_nemo

CHUNK = 1 << 16
TIMEOUT_SECONDS = 60
PROGRESS_INTERVAL_SECONDS = 0.5


class DownloadError(TinyASRError):
    """A download failed (network, HTTP status, truncated or corrupted file); the message names the URL or file."""


@dataclass(frozen=True)
class RegistryEntry:
    """A public model: where it is, what it is; size / sha256 only where known for certain (else None)."""

    url: str
    description: str
    card: str
    size: Optional[int] = None
    sha256: Optional[str] = None


_NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/nemo"
_CARD = "https://catalog.ngc.nvidia.com/orgs/nvidia/teams/nemo/models"

# URLs as NeMo's own list_available_models() gives them (NeMo 1.x, EncDecCTCModel / EncDecCTCModelBPE /
# EncDecClassificationModel).  Sizes and hashes are not recorded: none could be verified from here.
REGISTRY = {
    "stt_en_quartznet15x5": RegistryEntry(
        f"{_NGC}/stt_en_quartznet15x5/versions/1.0.0rc1/files/stt_en_quartznet15x5.nemo",
        "QuartzNet 15x5, English, characters (NVIDIA NeMo)", f"{_CARD}/stt_en_quartznet15x5"),
    "stt_en_citrinet_256": RegistryEntry(
        f"{_NGC}/stt_en_citrinet_256/versions/1.0.0rc1/files/stt_en_citrinet_256.nemo",
        "Citrinet-256, English, sentencepiece subwords (NVIDIA NeMo)", f"{_CARD}/stt_en_citrinet_256"),
    "stt_en_citrinet_512": RegistryEntry(
        f"{_NGC}/stt_en_citrinet_512/versions/1.0.0rc1/files/stt_en_citrinet_512.nemo",
        "Citrinet-512, English, sentencepiece subwords (NVIDIA NeMo)", f"{_CARD}/stt_en_citrinet_512"),
    "stt_en_citrinet_1024": RegistryEntry(
        f"{_NGC}/stt_en_citrinet_1024/versions/1.0.0rc1/files/stt_en_citrinet_1024.nemo",
        "Citrinet-1024, English, sentencepiece subwords (NVIDIA NeMo)", f"{_CARD}/stt_en_citrinet_1024"),
    # ConformerEncoder models (EncDecCTCModelBPE.list_available_models(), NeMo 1.x).
    "stt_en_conformer_ctc_small": RegistryEntry(
        f"{_NGC}/stt_en_conformer_ctc_small/versions/1.6.0/files/stt_en_conformer_ctc_small.nemo",
        "Conformer-CTC Small, English, sentencepiece subwords (NVIDIA NeMo)", f"{_CARD}/stt_en_conformer_ctc_small"),
    "stt_en_fastconformer_ctc_large": RegistryEntry(
        f"{_NGC}/stt_en_fastconformer_ctc_large/versions/1.0.0/files/stt_en_fastconformer_ctc_large.nemo",
        "FastConformer-CTC Large, English, sentencepiece subwords (NVIDIA NeMo)",
        f"{_CARD}/stt_en_fastconformer_ctc_large"),
    # A transducer (EncDecRNNTBPEModel.list_available_models(), NeMo 1.x): encoder, prediction network and joint
    # in one .tasr, decoded greedily as NeMo does.
    "stt_en_fastconformer_transducer_large": RegistryEntry(
        f"{_NGC}/stt_en_fastconformer_transducer_large/versions/1.0.0/files/stt_en_fastconformer_transducer_large.nemo",
        "FastConformer-Transducer Large, English, sentencepiece subwords, RNN-T (NVIDIA NeMo)",
        f"{_CARD}/stt_en_fastconformer_transducer_large"),
    "commandrecognition_en_matchboxnet3x1x64_v2": RegistryEntry(
        f"{_NGC}/commandrecognition_en_matchboxnet3x1x64_v2/versions/1.0.0rc1/files/"
        "commandrecognition_en_matchboxnet3x1x64_v2.nemo",
        "MatchboxNet 3x1x64, Speech Commands v2 keywords (NVIDIA NeMo)",
        f"{_CARD}/commandrecognition_en_matchboxnet3x1x64_v2"),
    "vad_marblenet": RegistryEntry(
        f"{_NGC}/vad_marblenet/versions/1.0.0rc1/files/vad_marblenet.nemo",
        "MarbleNet 3x2x64 voice activity detection, speech / background per window (NVIDIA NeMo)",
        f"{_CARD}/vad_marblenet"),
}

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# ---------------------------------------------------------------------------------------------------------------------
# Downloading


class _Progress:
    """"\\r<what>: 12.3 / 45.6 MB (27%)" on stderr, at most every PROGRESS_INTERVAL_SECONDS, and a final line."""

    def __init__(self, what: str, done: int, total: Optional[int], stream: TextIO):
        self.what, self.done, self.total, self.stream, self.last = what, done, total, stream, 0.0

    def update(self, count: int, final: bool = False) -> None:
        self.done += count
        now = time.monotonic()
        if not final and now - self.last < PROGRESS_INTERVAL_SECONDS:
            return
        self.last = now
        text = f"{self.done / 1e6:.1f} MB"
        if self.total:
            text = f"{self.done / 1e6:.1f} / {self.total / 1e6:.1f} MB ({100 * self.done // self.total}%)"
        self.stream.write(f"\r{self.what}: {text}" + ("\n" if final else ""))
        self.stream.flush()


def _open(url: str, offset: int):
    """(response, None), or (None, total size) when the server says the range starting at ``offset`` is empty."""
    headers = {"User-Agent": "tinyasr-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS), None
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = re.match(r"bytes \*/(\d+)", exc.headers.get("Content-Range") or "")
            return None, int(total.group(1)) if total else None
        raise DownloadError(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect ({reason})") from None


def _resume_offset(response, url: str, offset: int) -> int:
    """Where the body starts: ``offset`` for a 206 answer with a matching Content-Range, 0 for a full 200 answer."""
    if response.status == 200:
        return 0  # the server ignored the Range header: start over
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if response.status != 206 or not match or int(match.group(1)) != offset:
        raise DownloadError(f"{url}: unexpected answer to a resume request (HTTP {response.status}, "
                            f"Content-Range {response.headers.get('Content-Range')!r})")
    return offset


def download(url: str, dest, *, size: Optional[int] = None, sha256: Optional[str] = None,
             stream: Optional[TextIO] = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed if present); verify size / sha256; return dest.

    A truncated transfer raises DownloadError and keeps the .part file for the next attempt; a sha256
    mismatch deletes it.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    stream = stream or sys.stderr
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    response, expected = _open(url, offset)
    if response is None and expected != offset:  # the partial file does not fit the remote file: start over
        part.unlink()
        offset = 0
        response, expected = _open(url, 0)
    if response is not None:
        with response:
            offset = _resume_offset(response, url, offset)
            length = response.headers.get("Content-Length")
            expected = offset + int(length) if length is not None and length.isdigit() else None
            if size is not None and expected is not None and expected != size:
                raise DownloadError(f"{url}: the server offers {expected} bytes, the registry says {size}")
            progress = _Progress(f"downloading {dest.name}", offset, expected or size, stream)
            with open(part, "ab" if offset else "wb") as f:
                try:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        f.write(block)
                        progress.update(len(block))
                except (http.client.HTTPException, OSError) as exc:
                    stream.write("\n")
                    raise DownloadError(f"{url}: the transfer broke off after {f.tell()} bytes ({exc}); "
                                        f"run the command again to resume from {part}") from None
            progress.update(0, final=True)
    received = part.stat().st_size if part.exists() else 0
    wanted = size if size is not None else expected
    if wanted is not None and received != wanted:
        raise DownloadError(f"{url}: got {received} of {wanted} bytes; run the command again to resume from {part}")
    if sha256 is not None:
        digest = file_sha256(part)
        if digest != sha256.lower():
            part.unlink()
            raise DownloadError(f"{url}: sha256 of the download is {digest}, expected {sha256}; "
                                "the file was deleted (corrupted or not the published file)")
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------------------------------------------------
# Fetch + convert + cache


def fetch_model(name: str, *, cache_dir=None, url: Optional[str] = None, sha256: Optional[str] = None,
                stream: Optional[TextIO] = None) -> Path:
    """The cached ``NAME.tasr``, downloading and converting it first if it is not there yet.

    ``url`` overrides the registry's (then the registry's size / sha256 no longer apply) and allows names
    outside the registry; ``sha256`` is the expected digest of the downloaded file.
    """
    stream = stream or sys.stderr
    if not _SAFE_NAME.match(name):
        raise DownloadError(f"model name {name!r} must be letters, digits, '.', '_' or '-' (it names the cache file)")
    entry = REGISTRY.get(name)
    if entry is None and url is None:
        raise DownloadError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))} "
                            "(or give --url for another .nemo file)")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / f"{name}.tasr"
    if target.is_file():
        stream.write(f"{name}: using the cached {target}\n")
        return target
    use_registry = entry is not None and url in (None, entry.url)
    source_url = entry.url if use_registry else url
    file_name = Path(urllib.parse.urlparse(source_url).path).name or f"{name}.nemo"
    downloads = folder / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = download(source_url, downloads / file_name, size=entry.size if use_registry else None,
                       sha256=sha256 or (entry.sha256 if use_registry else None), stream=stream)
    stream.write(f"{name}: converting {archive.name}\n")
    convert_nemo(archive, target)
    archive.unlink()
    stream.write(f"{name}: saved {target}\n")
    return target


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="the model to fetch (omit it to list the known models)")
    parser.add_argument("--cache-dir", metavar="DIR", help="where converted models are kept "
                        "(default: $TINYASR_HOME/models or ~/.cache/tinyasr/models)")
    parser.add_argument("--url", metavar="URL", help="download the .nemo file from this URL instead of the registry's")
    parser.add_argument("--sha256", metavar="HEX", help="expected sha256 of the downloaded file")


def run(args: argparse.Namespace) -> int:
    """List the registry, or fetch NAME and print the path of its .tasr file; errors raise TinyASRError."""
    if args.name is None:
        for name, entry in sorted(REGISTRY.items()):
            print(f"{name:45s} {entry.description}\n{'':45s} {entry.card}")
        return 0
    print(fetch_model(args.name, cache_dir=args.cache_dir, url=args.url, sha256=args.sha256))
    return 0
