"""Run the API server double standalone: ``python -m dra_driver.testing.apiserver``.

For tests that start the driver as a separate process (and for ``dra-driver demo``):
it binds to 127.0.0.1, writes a kubeconfig, prints its path on stdout, and stops
cleanly on SIGTERM or SIGINT. Faults and the request log are under ``/_test/``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from .server import ApiServerDouble


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is a number from 0 to 65535, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dra_driver.testing.apiserver", description=__doc__
    )
    parser.add_argument(
        "--port", type=_port, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)"
    )
    parser.add_argument(
        "--kubeconfig-out", type=Path, help="where to write the kubeconfig (default: a temp dir)"
    )
    parser.add_argument(
        "--history", type=int, default=None, help="watch events kept for resuming watches"
    )
    parser.add_argument(
        "--bookmark-interval", type=float, default=60.0, help="seconds between watch bookmarks"
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )

    api = ApiServerDouble(
        port=args.port, history_limit=args.history, bookmark_interval=args.bookmark_interval
    )
    try:
        api.start()
    except OSError as e:
        print(
            f"error: cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}"
            + (" (pick another --port, or 0 for a free one)" if args.port else ""),
            file=sys.stderr,
        )
        return 2
    try:
        try:
            if args.kubeconfig_out is not None:
                args.kubeconfig_out.parent.mkdir(parents=True, exist_ok=True)
                path = api.write_kubeconfig(args.kubeconfig_out)
            else:
                path = api.kubeconfig_path(tempfile.mkdtemp(prefix="apiserver-double-"))
        except OSError as e:
            print(f"error: cannot write the kubeconfig: {e}", file=sys.stderr)
            return 2
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        # Before the path is printed: whoever waits for it may signal at once.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        print(path, flush=True)
        print(f"serving {api.url}", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
