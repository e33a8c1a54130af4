"""Voice commands on a Raspberry Pi: say digits, each runs an action.

Energy voice activity detection (no model) cuts the audio into utterances, so the recogniser runs only when
someone speaks; each utterance is transcribed whole by the bundled digits model and its words are looked up
in ACTIONS.  On a Pi, replace ``run`` with GPIO calls (gpiozero) or anything else.  The microphone needs
``pip install sounddevice`` and ``sudo apt install libportaudio2``; ``--file`` reads a file instead.

    python demos/pi_voice_commands.py [--file FILE]
"""

import argparse

import numpy as np

import tinyasr
from tinyasr.audio.io import load_audio
from tinyasr.pipeline.vad import EnergyVAD, Segmenter, VADConfig

ACTIONS = {"one": "lights on", "two": "lights off", "three": "heating up", "four": "heating down",
           "five": "music on", "six": "music off", "seven": "next track", "eight": "volume up",
           "nine": "volume down", "zero": "all off"}
CHUNK_SECONDS = 0.1
CONFIG = VADConfig(min_silence=0.8, max_segment=8.0)  # a command ends after 0.8 s of quiet
KEEP_SECONDS = CONFIG.max_segment + 2 * CONFIG.speech_pad + 1.0  # audio held for the utterance being spoken


def run(word):
    print(f"  {word} -> {ACTIONS[word]}", flush=True)


def microphone(rate):
    import sounddevice

    step = int(rate * CHUNK_SECONDS)
    with sounddevice.InputStream(samplerate=rate, channels=1, dtype="float32", blocksize=step) as mic:
        while True:
            yield mic.read(step)[0][:, 0]


def audio_file(path, rate):
    samples, _ = load_audio(path, sample_rate=rate)
    step = int(rate * CHUNK_SECONDS)
    for i in range(0, len(samples), step):
        yield samples[i:i + step]
    yield np.zeros(rate, np.float32)  # a second of quiet, as a room would give, to end the last command


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", help="read this audio file instead of the microphone")
    args = parser.parse_args()
    recognizer = tinyasr.Recognizer()
    rate = recognizer.sample_rate
    vad, segmenter = EnergyVAD(rate), Segmenter(CONFIG)
    kept, kept_start = np.zeros(0, np.float32), 0  # the last KEEP_SECONDS of audio, from sample kept_start

    def handle(segments):
        for start, end in segments:
            first = max(0, int(start * rate) - kept_start)
            text = recognizer.transcribe(kept[first:int(end * rate) - kept_start], sample_rate=rate).text
            print(f"heard: {text or '(nothing)'}", flush=True)
            for word in text.split():
                if word in ACTIONS:
                    run(word)

    print("listening for digit commands (Ctrl-C stops)", flush=True)
    try:
        for chunk in (audio_file(args.file, rate) if args.file else microphone(rate)):
            kept = np.concatenate([kept, chunk])
            handle(segmenter.accept(vad.accept(chunk)))
            drop = max(0, kept.size - int(KEEP_SECONDS * rate))
            kept, kept_start = kept[drop:], kept_start + drop
    except KeyboardInterrupt:
        pass
    handle(segmenter.finish())


if __name__ == "__main__":
    main()
