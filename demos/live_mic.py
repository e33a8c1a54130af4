"""Live transcription in the terminal: the partial text grows on one line, each utterance ends on its own line.

The microphone needs ``pip install sounddevice`` and the PortAudio library (Debian / Raspberry Pi OS:
``sudo apt install libportaudio2``).  ``--file`` reads a file instead (add ``--realtime`` to hear the pace
of a microphone); that is how the demo is tested.

    python demos/live_mic.py [-m MODEL] [--file FILE [--realtime]]
"""

import argparse
import time

import tinyasr

CHUNK_SECONDS = 0.1


def microphone(rate):
    """16-bit chunks from the default input device at the model's rate (PortAudio resamples if it must)."""
    import sounddevice

    step = int(rate * CHUNK_SECONDS)
    with sounddevice.InputStream(samplerate=rate, channels=1, dtype="int16", blocksize=step) as mic:
        while True:
            block, _ = mic.read(step)
            yield block[:, 0], rate


def audio_file(path, realtime):
    """A file's chunks at its own rate (the stream resamples), optionally at the pace they would be recorded."""
    import soundfile

    with soundfile.SoundFile(path) as handle:
        step, started = int(handle.samplerate * CHUNK_SECONDS), time.monotonic()
        for index, block in enumerate(handle.blocks(step, dtype="int16", always_2d=True)):
            if realtime:
                time.sleep(max(0.0, started + index * CHUNK_SECONDS - time.monotonic()))
            yield block[:, 0], handle.samplerate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", help="a .tasr file or model name (default: the bundled digits model)")
    parser.add_argument("--file", help="read this audio file instead of the microphone")
    parser.add_argument("--realtime", action="store_true", help="with --file: feed it at real-time pace")
    args = parser.parse_args()

    recognizer = tinyasr.Recognizer(args.model)
    stream = recognizer.stream()
    chunks = audio_file(args.file, args.realtime) if args.file else microphone(recognizer.sample_rate)
    shown = ""

    def end_utterance():
        nonlocal shown
        start = stream.utterance_start
        result = stream.finalize()
        if result.text:
            print(f"\r[{start:6.2f} - {start + result.duration:6.2f}] {result.text}".ljust(len(shown) + 1))
        shown = ""

    try:
        for samples, rate in chunks:
            stream.accept_waveform(samples, rate)
            if stream.partial != shown:
                print("\r" + stream.partial.ljust(len(shown)), end="", flush=True)
                shown = stream.partial
            if stream.is_endpoint:
                end_utterance()
    except KeyboardInterrupt:
        pass
    end_utterance()


if __name__ == "__main__":
    main()
