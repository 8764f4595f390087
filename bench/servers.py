"""The servers the load benchmark compares, each started fresh: `aviary serve --dev`, Janus
with the VideoRoom plugin, and a mediasoup worker behind bench/mediasoup/server.mjs. Also
used by tests/interop/test_janus.py and test_mediasoup.py.

Janus must run inside the private network namespace of scripts/testnet.sh: its ICE library
never gathers loopback interfaces, so it is pinned with `ice_enforce_list` to the veth that
carries 127.0.0.2, and clients must use 127.0.0.2 as their own address toward it.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

JANUS_LIB = "/usr/lib/x86_64-linux-gnu/janus"
BENCH = os.path.dirname(os.path.abspath(__file__))
# Where bench/mediasoup/build.sh installs mediasoup and builds its worker.
MEDIASOUP_DIR = os.environ.get("MEDIASOUP_DIR", os.path.join(BENCH, "mediasoup", "build"))
MEDIASOUP_WORKER = os.path.join(
    MEDIASOUP_DIR, "node_modules/mediasoup/worker/out/Release/build/mediasoup-worker"
)
MEDIASOUP_BUILD = f"bench/mediasoup/build.sh {MEDIASOUP_DIR}"
VETH = "avr0"  # the veth scripts/testnet.sh gives 127.0.0.2


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def raise_nofile() -> None:
    """Room for a thousand peers' sockets (run in the child before exec)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    name = ""
    proc: subprocess.Popen

    def media_pid(self) -> int:
        """The process that forwards media (whose CPU is the server's)."""
        return self.proc.pid

    def helper_pids(self) -> dict[str, int]:
        """Other processes of the server, measured apart (mediasoup's Node signaling)."""
        return {}

    def ready(self) -> None:
        """Waits for the server's TCP port; a server that never opens it is stopped."""
        try:
            wait_tcp(self.port)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Aviary(Server):
    name = "aviary"

    def __init__(self, binary: str, extra: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.port = free_port()
        udp = free_port(socket.SOCK_DGRAM)
        self.proc = subprocess.Popen(
            [binary, "serve", "--dev", "--port", str(self.port), "--udp-port", str(udp),
             "--tcp-port", str(free_port()), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"}, preexec_fn=raise_nofile,
        )
        self.ready()

    def load_args(self) -> list[str]:
        return ["--url", f"ws://127.0.0.1:{self.port}"]


class Janus(Server):
    name = "janus"

    def __init__(self, workdir: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="janus-", dir=workdir)
        self.port = free_port()
        for sub, lib in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_websockets.so")):
            os.makedirs(os.path.join(self.dir, sub))
            os.symlink(os.path.join(JANUS_LIB, sub, lib), os.path.join(self.dir, sub, lib))
        for sub in ("events", "loggers"):
            os.makedirs(os.path.join(self.dir, sub))
        self.write("janus.jcfg", f"""
general: {{
    configs_folder = "{self.dir}"
    plugins_folder = "{self.dir}/plugins"
    transports_folder = "{self.dir}/transports"
    events_folder = "{self.dir}/events"
    loggers_folder = "{self.dir}/loggers"
    log_to_stdout = true
    debug_level = 3
    session_timeout = 0
    event_loops = 2
}}
media: {{
    rtp_port_range = "20000-60000"
}}
nat: {{
    ice_enforce_list = "{VETH}"
}}
""")
        self.write("janus.transport.websockets.jcfg", f"""
general: {{
    json = "compact"
    ws = true
    ws_port = {self.port}
    ws_ip = "127.0.0.1"
    wss = false
}}
admin: {{
    admin_ws = false
}}
""")
        # No admin_key: the load tester creates its room through the API.
        self.write("janus.plugin.videoroom.jcfg", "general: {\n}\n")
        self.log = open(os.path.join(self.dir, "janus.log"), "w")
        self.proc = subprocess.Popen(
            ["janus", "-F", self.dir, "-C", os.path.join(self.dir, "janus.jcfg")],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=raise_nofile,
        )
        self.ready()

    def write(self, name: str, text: str) -> None:
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)

    def stop(self) -> None:
        super().stop()
        self.log.close()

    def load_args(self) -> list[str]:
        return ["--janus", "--url", f"ws://127.0.0.1:{self.port}", "--local-ip", "127.0.0.2"]


def mediasoup_available() -> bool:
    return os.path.isfile(MEDIASOUP_WORKER) and shutil.which("node") is not None


class Mediasoup(Server):
    """A mediasoup worker (one thread, as mediasoup runs one worker per core) with the Node
    signaling server of bench/mediasoup/server.mjs. Like Janus it binds exactly the IP it
    is given: 127.0.0.2 on the namespace's veth."""

    name = "mediasoup"

    def __init__(self, workdir: str) -> None:
        self.port = free_port()
        self.log = open(os.path.join(workdir, f"mediasoup-{self.port}.log"), "w")
        self.proc = subprocess.Popen(
            ["node", os.path.join(BENCH, "mediasoup", "server.mjs"), "--port", str(self.port),
             "--ip", "127.0.0.2"],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, "MEDIASOUP_DIR": MEDIASOUP_DIR}, preexec_fn=raise_nofile,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("mediasoup ready "):
            self.stop()
            raise RuntimeError(f"mediasoup did not start (said {line!r}); see {self.log.name}")
        self.worker_pid = int(line.split()[2])
        self.ready()

    def media_pid(self) -> int:
        return self.worker_pid

    def helper_pids(self) -> dict[str, int]:
        return {"node": self.proc.pid}

    def stop(self) -> None:
        super().stop()
        self.log.close()

    def load_args(self) -> list[str]:
        return ["--mediasoup", "--url", f"ws://127.0.0.1:{self.port}", "--local-ip", "127.0.0.2"]


NS_MARK = "AVIARY_BENCH_NETNS"
ROOT = os.path.dirname(BENCH)
# Aviary with congestion control off, to measure what it costs (bench/load.py's aviary-nocc).
NO_CONGESTION_CONTROL = "rtc: {congestion_control: {enabled: false}}"


def in_namespace(script: str, argv: list[str]) -> int | None:
    """Re-runs `script` inside a private network namespace (scripts/testnet.sh) unless it
    already runs in one; returns the exit status of that run, or None when already inside."""
    if os.environ.get(NS_MARK):
        return None
    cmd = [os.path.join(ROOT, "scripts/testnet.sh"), "run", "--", "env", f"{NS_MARK}=1",
           sys.executable, os.path.abspath(script), *argv]
    return subprocess.call(cmd)


def available(names: list[str]) -> list[str]:
    """The servers of `names` installed here; the others are named on stderr."""
    servers = list(names)
    if "janus" in servers and not shutil.which("janus"):
        print("no janus binary (apt-get install janus): leaving Janus out", file=sys.stderr)
        servers.remove("janus")
    if "mediasoup" in servers and not mediasoup_available():
        print(f"no mediasoup worker (build it: {MEDIASOUP_BUILD}): leaving mediasoup out", file=sys.stderr)
        servers.remove("mediasoup")
    return servers


def start(name: str, workdir: str, binary: str) -> Server:
    """A fresh server of that name: aviary, aviary-nocc, janus or mediasoup."""
    if name == "janus":
        return Janus(workdir)
    if name == "mediasoup":
        return Mediasoup(workdir)
    if name == "aviary-nocc":
        return Aviary(binary, ("--config-body", NO_CONGESTION_CONTROL))
    return Aviary(binary)
