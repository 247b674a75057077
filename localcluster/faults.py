"""A slow and lossy network between a client and kube-apiserver: Toxiproxy on 127.0.0.1.

`FaultProxy` runs toxiproxy-server (built like the control plane, see
build.py) and one TCP proxy in front of the API server's secure port. TLS
passes through untouched: the proxy listens on 127.0.0.1, which the serving
certificate names, so a kubeconfig that points at the proxy verifies as usual.
Toxics then act on the bytes, per connection and direction:

    with FaultProxy(cluster.apiserver_port, workdir) as proxy:
        kubeconfig = proxy.kubeconfig_through(cluster.kubeconfig, workdir / "slow.kubeconfig")
        with proxy.toxic(latency(300, jitter_ms=100)):
            ...  # every answer arrives 200-400 ms late

A toxic applies to the connections open when it is added as well as to new
ones; ``toxicity`` is the share of connections (drawn per connection) it hits.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from localcluster.build import ensure_tool
from localcluster.processes import Component, free_port, stop_process_groups

PROXY_NAME = "kube-apiserver"
START_TIMEOUT = 10.0
PORT_ATTEMPTS = 3


class FaultProxyError(RuntimeError):
    """toxiproxy-server did not start or refused a request; the message says which."""


@dataclass(frozen=True)
class Toxic:
    """One Toxiproxy toxic. ``stream`` is the direction it acts on: "downstream" is the server's answers."""

    name: str
    type: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: dict[str, int] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": self.attributes,
        }


def latency(ms: int, *, jitter_ms: int = 0, stream: str = "downstream", toxicity: float = 1.0) -> Toxic:
    """Every chunk of data is held back ``ms`` (± ``jitter_ms``) before it is passed on."""
    return Toxic(f"latency-{stream}", "latency", stream, toxicity, {"latency": ms, "jitter": jitter_ms})


def timeout(ms: int, *, toxicity: float = 1.0) -> Toxic:
    """The server's answers are dropped and the connection is closed ``ms`` later.

    On a connection that is already open, a request still reaches the API server
    and takes effect; only its answer is lost: the client cannot know the outcome.
    (On a new connection the TLS handshake cannot finish, so nothing is sent.)
    """
    return Toxic("timeout", "timeout", "downstream", toxicity, {"timeout": ms})


def reset_peer(ms: int = 0, *, stream: str = "downstream", toxicity: float = 1.0) -> Toxic:
    """The connection is reset (TCP RST) ``ms`` after the first data flows in ``stream``.

    Downstream, the request has reached the server by then: its outcome is unknown to the client.
    """
    return Toxic(f"reset-{stream}", "reset_peer", stream, toxicity, {"timeout": ms})


def bandwidth(kilobytes_per_second: int, *, stream: str = "downstream", toxicity: float = 1.0) -> Toxic:
    """At most this rate in ``stream``: a long LIST or a burst of watch events trickles in."""
    return Toxic(f"bandwidth-{stream}", "bandwidth", stream, toxicity, {"rate": kilobytes_per_second})


class FaultProxy:
    """toxiproxy-server on 127.0.0.1 with one proxy, named kube-apiserver, in front of ``upstream_port``."""

    def __init__(self, upstream_port: int, directory: Path, *, bin_dir: Path | None = None) -> None:
        self.upstream = f"127.0.0.1:{upstream_port}"
        self.directory = directory
        self._bin_dir = bin_dir
        self.api_port = 0
        self.listen_port = 0
        self.server: Component | None = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """Where clients connect instead of the API server: ``https://`` + this."""
        return f"127.0.0.1:{self.listen_port}"

    def start(self) -> FaultProxy:
        binary = (self._bin_dir or ensure_tool("toxiproxy")) / "toxiproxy-server"
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.api_port = free_port()
            self.server = Component(
                "toxiproxy-server",
                [str(binary), "-host", "127.0.0.1", "-port", str(self.api_port)],
                self.directory / f"toxiproxy-{self.api_port}.log",
            )
            self.server.start(detached=False)
            if self._wait_until_answering():
                break
            if attempt == PORT_ATTEMPTS:
                raise FaultProxyError(f"toxiproxy-server did not start:\n{self.server.log_tail()}")
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.listen_port = free_port()
            try:
                self._call(
                    "POST",
                    "/proxies",
                    {"name": PROXY_NAME, "listen": self.address, "upstream": self.upstream, "enabled": True},
                )
                return self
            except FaultProxyError:
                if attempt == PORT_ATTEMPTS:  # someone else took the port between choosing and binding
                    raise
        return self

    def stop(self) -> None:
        if self.server is not None and self.server.exit_code() is None:
            stop_process_groups([self.server.pid], grace_seconds=2)
            assert self.server.process is not None
            self.server.process.wait()

    def _wait_until_answering(self) -> bool:
        """True once the API answers; False if the server exited (its port was taken)."""
        assert self.server is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.server.exit_code() is not None:
                return False
            with contextlib.suppress(FaultProxyError):
                self._call("GET", "/version")
                return True
            time.sleep(0.05)
        raise FaultProxyError(f"toxiproxy-server did not answer within {START_TIMEOUT:.0f}s")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as e:
            raise FaultProxyError(f"toxiproxy {method} {path}: {e.code} {e.read().decode(errors='replace')}") from e
        except OSError as e:
            raise FaultProxyError(f"toxiproxy {method} {path}: {e}") from e
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            return text  # /version answers plain text

    # -- what clients use ----------------------------------------------------

    def kubeconfig_through(self, kubeconfig: Path, target: Path) -> Path:
        """A copy of ``kubeconfig`` (same credentials) whose clusters are reached through the proxy."""
        config = yaml.safe_load(kubeconfig.read_text())
        for entry in config.get("clusters") or []:
            entry["cluster"]["server"] = f"https://{self.address}"
        target.write_text(yaml.safe_dump(config))
        target.chmod(0o600)
        return target

    # -- faults ----------------------------------------------------------------

    def add(self, toxic: Toxic) -> None:
        self._call("POST", f"/proxies/{PROXY_NAME}/toxics", toxic.body())

    def remove(self, toxic: Toxic) -> None:
        self._call("DELETE", f"/proxies/{PROXY_NAME}/toxics/{toxic.name}")

    def toxics(self) -> list[str]:
        return [t["name"] for t in self._call("GET", f"/proxies/{PROXY_NAME}/toxics")]

    @contextlib.contextmanager
    def toxic(self, *toxics: Toxic) -> Iterator[None]:
        """These toxics for the duration of the block."""
        added: list[Toxic] = []
        try:
            for toxic in toxics:
                self.add(toxic)
                added.append(toxic)
            yield
        finally:
            for toxic in added:
                self.remove(toxic)

    def cut(self) -> None:
        """Close every connection and refuse new ones, as a network partition would (until `restore`)."""
        self._call("POST", f"/proxies/{PROXY_NAME}", {"enabled": False})

    def restore(self) -> None:
        self._call("POST", f"/proxies/{PROXY_NAME}", {"enabled": True})
