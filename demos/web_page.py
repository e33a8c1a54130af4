"""The web page demo: ``tinyasr serve`` in this process, and its page opened in your browser.

The page records the microphone (getUserMedia + AudioWorklet), streams it to the server and shows the
growing partial text and the final lines with times; it can also send a file.  The same without this
script: ``tinyasr serve`` and open http://127.0.0.1:8765/.  With ``--file`` no browser opens: the file goes
through the Python client (``tinyasr.serve.client``) over the same protocol, which is how this is tested.

    python demos/web_page.py [-m MODEL] [--port 8765] [--file FILE [--realtime]]
"""

import argparse
import asyncio
import time
import webbrowser

import tinyasr
from tinyasr.serve.client import stream_file
from tinyasr.serve.server import ServeConfig, ServerThread


def show(event):
    if event["type"] == "partial":
        print("\r" + event["text"], end="", flush=True)
    elif event["type"] == "final":
        print(f"\r[{event['start']:6.2f} - {event['end']:6.2f}] {event['text']}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", help="a .tasr file or model name (default: the bundled digits model)")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--file", help="stream this file through the Python client instead of opening a browser")
    parser.add_argument("--realtime", action="store_true", help="with --file: at the pace of a microphone")
    args = parser.parse_args()
    with ServerThread(tinyasr.Recognizer(args.model), ServeConfig(port=args.port)) as server:
        if args.file:
            asyncio.run(stream_file(server.url, args.file, realtime=args.realtime, on_event=show))
            return
        print(f"page: {server.page_url}  (Ctrl-C stops)", flush=True)
        webbrowser.open(server.page_url)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
