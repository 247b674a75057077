"""One container of a pod spec, run from an image in buildah's store the way a kubelet would run it.

tests/test_image.py runs the chart's own Deployment with it, without a kubelet.
What the spec says becomes `buildah run` options: the command and args over the
image's entrypoint and cmd, env (with the downward API's metadata.namespace and
the KUBERNETES_SERVICE_* variables every pod gets), volume mounts (emptyDir,
Secret, the ServiceAccount token), user and group, fsGroup on the mounted files,
dropped capabilities, and a read-only root filesystem (every folder of the
image mounted read-only). The pod shares the host's network, so its ports are
this machine's. A field this runner cannot honour fails the test instead of
being ignored: a chart change that it does not know reaches a test first.

Not reproduced: resource limits (no cgroups here), allowPrivilegeEscalation
and the seccomp profile (buildah run has no such options); the probes are the
caller's to run, with `probe`.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from localcluster.image import Buildah

Manifest = dict[str, Any]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Kubelet defaults: a Secret volume's files are 0644 unless defaultMode says otherwise; emptyDir is 0777.
SECRET_DEFAULT_MODE = 0o644
EMPTY_DIR_MODE = 0o777
TERMINATION_GRACE_SECONDS = 30  # a pod's default terminationGracePeriodSeconds

# Fields of a container and a pod spec, by what this runner does with them.
CONTAINER_HONOURED = {
    "name",
    "image",
    "command",
    "args",
    "env",
    "ports",
    "volumeMounts",
    "securityContext",
    "workingDir",
}
CONTAINER_NOT_APPLICABLE = {"imagePullPolicy", "resources", "startupProbe", "livenessProbe", "readinessProbe"}
POD_HONOURED = {
    "containers",
    "volumes",
    "securityContext",
    "serviceAccountName",
    "automountServiceAccountToken",
    "terminationGracePeriodSeconds",
}
POD_NOT_APPLICABLE = {
    "enableServiceLinks",  # only the KUBERNETES_SERVICE_* variables are set either way
    "imagePullSecrets",
    "priorityClassName",
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
}
SECURITY_HONOURED = {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "readOnlyRootFilesystem", "capabilities"}
SECURITY_NOT_APPLICABLE = {"allowPrivilegeEscalation", "seccompProfile"}


class UnsupportedSpec(AssertionError):
    """The pod spec asks for something this runner does not reproduce: extend it, do not skip it."""


@dataclass(frozen=True)
class PodContext:
    """What a kubelet would fetch for the pod: its namespace, Secrets, token, and where the API server is."""

    namespace: str
    secrets: Mapping[str, Mapping[str, bytes]]  # Secret name -> data
    service_account: Mapping[str, bytes]  # token, ca.crt, namespace
    apiserver_host: str
    apiserver_port: int


class PodContainer:
    """A container of ``pod_spec`` run from ``image`` by buildah; ``start`` it, ``stop`` it."""

    def __init__(
        self, buildah: Buildah, image: str, pod_spec: Manifest, container_name: str, context: PodContext, workdir: Path
    ) -> None:
        _check_fields("pod spec", pod_spec, POD_HONOURED | POD_NOT_APPLICABLE)
        (spec,) = [c for c in pod_spec["containers"] if c["name"] == container_name]
        _check_fields(f"container {container_name}", spec, CONTAINER_HONOURED | CONTAINER_NOT_APPLICABLE)
        self.buildah = buildah
        self.image = image
        self.pod_spec = pod_spec
        self.spec = spec
        self.context = context
        self.workdir = workdir
        self.log_path = workdir / f"{container_name}.log"
        self.name = f"jobgate-test-{secrets.token_hex(4)}"
        self.process: subprocess.Popen[bytes] | None = None
        self._created = False
        pod_security = pod_spec.get("securityContext") or {}
        container_security = spec.get("securityContext") or {}
        _check_fields("pod securityContext", pod_security, SECURITY_HONOURED | SECURITY_NOT_APPLICABLE)
        _check_fields("container securityContext", container_security, SECURITY_HONOURED | SECURITY_NOT_APPLICABLE)
        self.security = {**pod_security, **container_security}

    # -- what the spec says, as buildah options --------------------------------

    def argv(self, image_config: Mapping[str, Any]) -> list[str]:
        """Kubernetes' rule: `command` replaces the entrypoint (and drops cmd), `args` replaces cmd."""
        if "command" in self.spec:
            return [*self.spec["command"], *self.spec.get("args", [])]
        return [*(image_config.get("Entrypoint") or []), *self.spec.get("args", image_config.get("Cmd") or [])]

    def env(self) -> dict[str, str]:
        values = {
            "KUBERNETES_SERVICE_HOST": self.context.apiserver_host,
            "KUBERNETES_SERVICE_PORT": str(self.context.apiserver_port),
        }
        for item in self.spec.get("env", []):
            if "value" in item:
                values[item["name"]] = str(item["value"])
            elif (item.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                values[item["name"]] = self.context.namespace
            else:
                raise UnsupportedSpec(f"env {item['name']}: {item}")
        return values

    def user(self, image_config: Mapping[str, Any]) -> str:
        image_user, _, image_group = str(image_config.get("User") or "0").partition(":")
        uid = str(self.security.get("runAsUser", image_user))
        gid = str(self.security.get("runAsGroup", image_group or uid))
        if self.security.get("runAsNonRoot") and not (uid.isdigit() and int(uid) != 0):
            # The kubelet refuses a user it cannot prove is not root (a name, or 0).
            raise AssertionError(f"runAsNonRoot, but the pod would run as user {uid!r}")
        return f"{uid}:{gid}"

    def port(self, name_or_number: str | int) -> int:
        """A containerPort by name (as probes and Services name them) or number."""
        if isinstance(name_or_number, int):
            return name_or_number
        for port in self.spec.get("ports", []):
            if port.get("name") == name_or_number:
                return int(port["containerPort"])
        raise AssertionError(f"container {self.spec['name']} has no port named {name_or_number!r}")

    def _volume_options(self, rootfs: Path) -> list[str]:
        volumes = {v["name"]: v for v in self.pod_spec.get("volumes", [])}
        fs_group = self.security.get("fsGroup")
        mounted: dict[str, tuple[Path, bool]] = {}
        for mount in self.spec.get("volumeMounts", []):
            if set(mount) - {"name", "mountPath", "readOnly"}:
                raise UnsupportedSpec(f"volumeMount {mount}")
            mounted[mount["mountPath"]] = (
                self._materialise(volumes[mount["name"]], fs_group),
                mount.get("readOnly", False),
            )
        if self.pod_spec.get("automountServiceAccountToken", True) and SERVICE_ACCOUNT_DIR not in mounted:
            files = dict(self.context.service_account)
            mounted[SERVICE_ACCOUNT_DIR] = (self._write_files("serviceaccount", files, 0o644, fs_group), True)
        options = []
        if self.security.get("readOnlyRootFilesystem"):
            options += _read_only_root(rootfs, covered=set(mounted))
        for path, (source, read_only) in mounted.items():
            # Mounted where the path leads inside the image (Debian's /var/run is a link to /run).
            target = _resolve_in(rootfs, path)
            # As a runtime does, the mount point is made before the root filesystem turns read-only.
            (rootfs / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
            options += ["--volume", f"{source}:{target}:{'ro' if read_only else 'rw'}"]
        return options

    def _materialise(self, volume: Manifest, fs_group: int | None) -> Path:
        kinds = set(volume) - {"name"}
        if kinds == {"emptyDir"}:
            folder = self.workdir / f"volume-{volume['name']}"
            folder.mkdir()
            folder.chmod(EMPTY_DIR_MODE)
            return folder
        if kinds == {"secret"}:
            source = volume["secret"]
            if set(source) - {"secretName", "defaultMode"}:
                raise UnsupportedSpec(f"secret volume {volume}")
            data = self.context.secrets[source["secretName"]]
            return self._write_files(
                f"volume-{volume['name']}", data, source.get("defaultMode", SECRET_DEFAULT_MODE), fs_group
            )
        raise UnsupportedSpec(f"volume {volume}")

    def _write_files(self, name: str, files: Mapping[str, bytes], mode: int, fs_group: int | None) -> Path:
        """Files as the kubelet lays out a Secret: owned by root and, with fsGroup, by that group."""
        folder = self.workdir / name
        folder.mkdir()
        for key, content in files.items():
            path = folder / key
            path.write_bytes(content)
            os.chown(path, 0, fs_group if fs_group is not None else 0)
            path.chmod(mode)
        return folder

    # -- running ---------------------------------------------------------------

    def start(self) -> PodContainer:
        inspected = self.buildah.image(self.image)
        assert inspected is not None, f"{self.image} is not in buildah's store"
        image_config: dict[str, Any] = inspected["OCIv1"]["config"]
        self.buildah.run("from", "--name", self.name, self.image)
        self._created = True
        rootfs = Path(self.buildah.run("mount", self.name))
        config = [flag for key, value in self.env().items() for flag in ("--env", f"{key}={value}")]
        if "workingDir" in self.spec:
            config += ["--workingdir", self.spec["workingDir"]]
        self.buildah.run("config", *config, self.name)
        capabilities = self.security.get("capabilities") or {}
        options = ["--isolation", "chroot", "--network", "host", "--user", self.user(image_config)]
        options += [flag for cap in capabilities.get("drop", []) for flag in ("--cap-drop", cap.lower())]
        options += [flag for cap in capabilities.get("add", []) for flag in ("--cap-add", cap.lower())]
        options += self._volume_options(rootfs)
        command = self.buildah.command("run", *options, self.name, "--", *self.argv(image_config))
        log = self.log_path.open("ab")
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        # A session of its own: stop() signals buildah and the container's process together.
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM to the container's process as a kubelet sends it, SIGKILL after the grace period; its exit code.

        Not to buildah: `buildah run` answers a signal by killing the container's process outright.
        """
        grace = float(self.pod_spec.get("terminationGracePeriodSeconds", TERMINATION_GRACE_SECONDS))
        if self.process is not None and self.process.poll() is None:
            main = self._main_process()
            with contextlib.suppress(ProcessLookupError):
                if main is None:  # not started yet: buildah's own processes only
                    os.killpg(self.process.pid, signal.SIGTERM)
                else:
                    os.kill(main, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._created:
            subprocess.run(self.buildah.command("umount", self.name), capture_output=True, check=False)
            subprocess.run(self.buildah.command("rm", self.name), capture_output=True, check=False)
            self._created = False
        return None if self.process is None else self.process.returncode

    def _main_process(self) -> int | None:
        """The container's first process: the first descendant of `buildah run` that is not buildah's own."""
        assert self.process is not None
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rpartition(")")[2].split()
                children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        level = [self.process.pid]
        while level:
            for pid in level:
                with contextlib.suppress(OSError):
                    # buildah's helpers run from memory: their names read "memfd:buildah-chroot-...".
                    if pid != self.process.pid and "buildah" not in Path(f"/proc/{pid}/comm").read_text():
                        return pid
            level = [child for pid in level for child in children.get(pid, [])]
        return None

    def log_tail(self, lines: int = 80) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    # -- probes ----------------------------------------------------------------

    def probe(self, spec: Manifest) -> bool:
        """One attempt of an httpGet or tcpSocket probe against 127.0.0.1 (the host network)."""
        try:
            if "httpGet" in spec:
                get = spec["httpGet"]
                if get.get("scheme", "HTTP") != "HTTP":
                    raise UnsupportedSpec(f"probe {spec}")
                connection = http.client.HTTPConnection("127.0.0.1", self.port(get["port"]), timeout=2)
                try:
                    connection.request("GET", get.get("path", "/"))
                    return 200 <= connection.getresponse().status < 400
                finally:
                    connection.close()
            if "tcpSocket" in spec:
                with socket.create_connection(("127.0.0.1", self.port(spec["tcpSocket"]["port"])), timeout=2):
                    return True
        except OSError:
            return False
        raise UnsupportedSpec(f"probe {spec}")

    def wait_until(self, probe_name: str) -> float:
        """Until the container's probe succeeds, within the time its spec allows; returns the seconds it took."""
        spec = self.spec[probe_name]
        allowed = spec.get("periodSeconds", 10) * spec.get("failureThreshold", 3) + spec.get("initialDelaySeconds", 0)
        started = time.monotonic()
        while not self.probe(spec):
            if not self.running():
                raise AssertionError(f"the container exited before its {probe_name} passed:\n{self.log_tail()}")
            if time.monotonic() - started > allowed:
                raise AssertionError(f"{probe_name} failed for {allowed}s, the spec's limit:\n{self.log_tail()}")
            time.sleep(0.2)
        return time.monotonic() - started


def _check_fields(what: str, spec: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(spec) - known)
    if unknown:
        raise UnsupportedSpec(f"{what} has fields this runner does not reproduce: {unknown}")


def _read_only_root(rootfs: Path, covered: set[str]) -> list[str]:
    """Every folder of the image, mounted read-only over itself.

    / itself stays root's (the pod's user cannot write it); /proc, /sys and /dev
    are the runtime's; buildah writes its own files into /run, so only the
    image's folders under /run are read-only there.
    """
    folders = [entry for entry in sorted(rootfs.iterdir()) if entry.name not in {"proc", "sys", "dev", "run"}]
    if (rootfs / "run").is_dir():
        folders += sorted((rootfs / "run").iterdir())
    options = []
    for folder in folders:
        inside = f"/{folder.relative_to(rootfs).as_posix()}"
        if folder.is_dir() and not folder.is_symlink() and inside not in covered:
            options += ["--volume", f"{folder}:{inside}:ro"]
    return options


def _resolve_in(rootfs: Path, path: str) -> str:
    """``path`` inside the image with its symbolic links followed, as a runtime resolves a mount target."""
    resolved = PurePosixPath("/")
    pending = list(PurePosixPath(path).parts[1:])
    for _ in range(255 + len(pending)):  # as many links as the kernel would follow
        if not pending:
            return str(resolved)
        part = pending.pop(0)
        if part == "..":
            resolved = resolved.parent
            continue
        candidate = resolved / part
        host = rootfs / candidate.relative_to("/")
        if not host.is_symlink():
            resolved = candidate
            continue
        link = PurePosixPath(os.readlink(host))
        if link.is_absolute():
            resolved, link = PurePosixPath("/"), link.relative_to("/")
        pending = [*link.parts, *pending]
    raise AssertionError(f"too many symbolic links resolving {path} in the image")
