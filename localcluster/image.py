"""Build the operator image from the Dockerfile, with Docker where its engine answers and buildah elsewhere.

buildah needs no daemon: its storage lives under ``<cache>/containers`` (vfs
driver, chroot isolation, so it works as root in an unprivileged container).
Without a registry to pull ``python:3.11-slim`` from, its base image is a
Debian root filesystem with python3 made by ``debootstrap`` from Debian's
packages, cached and imported once. A TLS-intercepting proxy's CA (the bundle
that pip on this machine trusts) reaches the build's pip step as a build
secret only, never a layer. Layers are cached (``--layers``): a build whose
inputs did not change reuses the image.

    python -m localcluster.image     # `make image`: build, then write the archives below

The image is written as ``build/image/jobgate-<version>.oci.tar`` (OCI archive)
and ``build/image/jobgate-<version>.docker.tar`` (docker-archive), which
``podman load``, ``docker load`` and ``kind load image-archive`` accept.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from localcluster.build import cache_root

REPO = Path(__file__).resolve().parents[1]
ARCHIVE_DIR = REPO / "build" / "image"
REPOSITORY = "jobgate"

# The base made from Debian's packages: the release the Dockerfile's default (python:3.11-slim) is built on.
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv")
# Removed from the debootstrapped tree: package caches and indexes, documentation, the host's DNS settings.
BASE_TRIM = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "etc/resolv.conf",
    "etc/hostname",
)
# Bump when the recipe above changes in a way its inputs do not show.
BASE_RECIPE = 1
BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")

# The operator image's label holding `build_inputs_digest`: an image with the same digest is reused as it is.
INPUTS_LABEL = "dev.jobgate.build-inputs"

# How `buildah bud` names the image each step made or reused: "--> 3d78673bd12", "--> Using cache <id>".
STEP_IMAGE = re.compile(r"^--> (?:Using cache )?([0-9a-f]{11,64})$", re.MULTILINE)

# Where pip on this machine is told to find the CAs it trusts, in pip's own order of precedence.
CA_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
CA_SECRET_ID = "ca-bundle"  # the Dockerfile's `RUN --mount=type=secret,id=ca-bundle`


class ImageError(RuntimeError):
    """The image could not be built; the message says why and what to do instead."""


def package_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


def image_cache() -> Path:
    return cache_root() / "containers"


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def buildah_available() -> bool:
    return shutil.which("buildah") is not None


def trusted_ca_bundle() -> Path | None:
    """The CA bundle pip trusts here ($PIP_CERT, pip's `cert` setting, then the general variables), if any."""
    candidates = [os.environ.get("PIP_CERT"), _pip_config_cert()]
    candidates += [os.environ.get(name) for name in CA_VARIABLES[1:]]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _pip_config_cert() -> str | None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def source_url() -> str:
    """The repository's origin, for the image's org.opencontainers.image.source label, if it is a public URL.

    A clone of a local folder (CI's, a worktree's) has none: the label stays empty rather than name a path.
    """
    proc = subprocess.run(
        ["git", "-C", str(REPO), "remote", "get-url", "origin"], capture_output=True, text=True, check=False
    )
    url = urlsplit(proc.stdout.strip() if proc.returncode == 0 else "")
    if url.scheme != "https" or not url.hostname:
        return ""
    return urlunsplit(url._replace(netloc=url.hostname + (f":{url.port}" if url.port else "")))  # no credentials


@dataclass(frozen=True)
class Built:
    """An image in the builder's store, and the archives written from it."""

    reference: str  # the name to run it by, e.g. localhost/jobgate:0.1.0 in buildah's store
    image_id: str
    size_bytes: int  # unpacked, as the store counts it
    archives: tuple[Path, ...]


class Buildah:
    """buildah with this project's own storage: no daemon, vfs driver, chroot isolation."""

    def __init__(self, storage: Path | None = None) -> None:
        self.storage = storage or image_cache()

    @property
    def global_args(self) -> list[str]:
        return [
            "--root",
            str(self.storage / "storage"),
            "--runroot",
            str(self.storage / "run"),
            "--storage-driver",
            "vfs",
        ]

    def command(self, *args: str) -> list[str]:
        return ["buildah", *self.global_args, *args]

    def run(self, *args: str, quiet: bool = True) -> str:
        """Run buildah and return its output; unless ``quiet``, also show it as it comes (on stderr)."""
        if quiet:
            proc = subprocess.run(self.command(*args), capture_output=True, text=True, check=False)
            output, code, detail = proc.stdout, proc.returncode, f": {proc.stderr.strip()}"
        else:
            lines = []
            with subprocess.Popen(
                self.command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as streaming:
                assert streaming.stdout is not None
                for line in streaming.stdout:
                    sys.stderr.write(line)
                    lines.append(line)
            output, code, detail = "".join(lines), streaming.returncode, " (its output is above)"
        if code != 0:
            raise ImageError(f"buildah {args[0]} exited with {code}{detail}")
        return output.strip()

    def prune_except(self, keep: set[str]) -> None:
        """Remove unnamed images (earlier builds' steps) whose IDs do not start with one in ``keep``.

        With the vfs driver every step is a full copy of the tree: without this, each changed
        build would leave about a gigabyte behind.
        """
        listed = json.loads(self.run("images", "--all", "--json") or "[]")
        stale = [
            image["id"]
            for image in listed
            if not image.get("names") and not any(image["id"].startswith(kept) for kept in keep)
        ]
        if stale:
            subprocess.run(self.command("rmi", *stale), capture_output=True, check=False)

    def image(self, reference: str) -> dict[str, Any] | None:
        """`buildah inspect` of an image in the store, or None if the store has no such image."""
        proc = subprocess.run(
            self.command("inspect", "--type", "image", reference), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            return None
        found: dict[str, Any] = json.loads(proc.stdout)
        return found

    def image_size(self, reference: str) -> int:
        """Bytes of the unpacked layers (the store keeps them uncompressed)."""
        inspected = self.image(reference)
        assert inspected is not None, reference
        return sum(int(layer["size"]) for layer in json.loads(inspected["Manifest"])["layers"])


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One build at a time per cache (a test and `make image` may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _say(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


# -- the base made from Debian's packages ------------------------------------


def debian_base(buildah: Buildah) -> str:
    """The buildah image of a Debian root filesystem with python3: imported once, made once per recipe."""
    recipe = f"{DEBIAN_SUITE} {' '.join(DEBIAN_PACKAGES)} minbase {BASE_RECIPE} {' '.join(BASE_TRIM)}"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    reference = f"localhost/jobgate-python-base:{DEBIAN_SUITE}-{key}"
    if buildah.image(reference) is not None:
        return reference
    tarball = buildah.storage / "base" / f"debian-{DEBIAN_SUITE}-python3-{key}.tar"
    if not tarball.is_file():
        _debootstrap(tarball)
    _say(f"importing {tarball.name} as {reference}")
    container = buildah.run("from", "--name", f"jobgate-base-import-{key}", "scratch")
    try:
        buildah.run("add", container, str(tarball), "/")
        config = ["config", "--cmd", "python3"]
        for variable in BASE_ENV:
            config += ["--env", variable]
        buildah.run(*config, container)
        buildah.run("commit", "--quiet", container, reference)
    finally:
        subprocess.run(buildah.command("rm", container), capture_output=True, check=False)
    return reference


def _debootstrap(tarball: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageError(
            "debootstrap is not installed: `apt-get install debootstrap` (it makes the base image from "
            "Debian's packages), or pass --python-image with a python3 image your store or registry has"
        )
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root: run `make image` as root, or pass --python-image")
    scratch = tarball.parent / f"{tarball.stem}.rootfs"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _say(f"debootstrap {DEBIAN_SUITE} with {', '.join(DEBIAN_PACKAGES)} from Debian's packages (a minute or two)")
    mirror = [os.environ["DEBIAN_MIRROR"]] if os.environ.get("DEBIAN_MIRROR") else []
    proc = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(DEBIAN_PACKAGES)}",
            DEBIAN_SUITE,
            str(scratch),
            *mirror,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        shutil.rmtree(scratch, ignore_errors=True)
        raise ImageError(f"debootstrap failed (set DEBIAN_MIRROR to use another mirror):\n{tail}")
    for relative in BASE_TRIM:
        _empty(scratch / relative)
    partial = tarball.with_suffix(".partial")
    with tarfile.open(partial, "w") as archive:
        for entry in sorted(scratch.iterdir()):
            # /dev, /proc and /sys are the runtime's: keep the folders, not debootstrap's device nodes.
            special = entry.name in {"dev", "proc", "sys"}
            archive.add(entry, arcname=entry.name, recursive=not special)
    partial.rename(tarball)
    shutil.rmtree(scratch)
    _say(f"base root filesystem ready in {time.monotonic() - started:.0f}s: {_mib(tarball.stat().st_size)}")


def _empty(path: Path) -> None:
    """Remove a file, or a folder's contents (the folder stays: packages expect it)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


# -- the operator image --------------------------------------------------------


def build_image(python_image: str | None = None, *, engine: str | None = None, write_archives: bool = True) -> Built:
    """Build the image (reusing what did not change) and, if asked, write its archives: what `make image` runs.

    ``engine`` is "docker", "buildah", or None for Docker where its engine answers and buildah elsewhere.
    """
    version = package_version()
    if engine == "docker" or (engine is None and docker_engine_answers()):
        return _build_with_docker(version, python_image, write_archives)
    if not buildah_available():
        raise ImageError(
            "neither a Docker engine nor buildah is available: `apt-get install buildah` "
            "(or start Docker) to build the image"
        )
    buildah = Buildah()
    with _exclusive(buildah.storage / "build.lock"):
        return _build_with_buildah(buildah, version, python_image, write_archives)


def _build_args(python_image: str | None) -> list[str]:
    args = [f"JOBGATE_SOURCE={source_url()}"]
    if python_image:
        args.append(f"PYTHON_IMAGE={python_image}")
    return [flag for arg in args for flag in ("--build-arg", arg)]


def _secret_args() -> list[str]:
    bundle = trusted_ca_bundle()
    return ["--secret", f"id={CA_SECRET_ID},src={bundle}"] if bundle else []


def _build_with_buildah(buildah: Buildah, version: str, python_image: str | None, write_archives: bool) -> Built:
    base = python_image or debian_base(buildah)
    reference = f"localhost/{REPOSITORY}:{version}"
    build_args = _build_args(base)
    inputs = build_inputs_digest(build_args, _base_identity(buildah, base))
    existing = buildah.image(reference)
    if existing is not None and _labels(existing).get(INPUTS_LABEL) == inputs:
        # Even with every layer cached, buildah on vfs copies each step's tree: seconds per step, minutes in all.
        _say(f"{reference} is up to date (its inputs are unchanged)")
    else:
        started = time.monotonic()
        _say(f"building {reference} with buildah on {base}")
        output = buildah.run(
            "bud",
            "--isolation",
            "chroot",
            "--layers",
            "--pull=never" if base.startswith("localhost/") else "--pull=false",
            *build_args,
            *_secret_args(),
            "--label",
            f"{INPUTS_LABEL}={inputs}",
            "--tag",
            reference,
            "--file",
            str(REPO / "Dockerfile"),
            str(REPO),
            quiet=False,
        )
        _say(f"built {reference} in {time.monotonic() - started:.0f}s")
        # Keep this build's steps, the layer cache of the next build; drop those of earlier ones.
        buildah.prune_except(set(STEP_IMAGE.findall(output)))
    inspected = buildah.image(reference)
    assert inspected is not None, reference
    image_id: str = inspected["FromImageID"]
    archives: tuple[Path, ...] = ()
    if write_archives:
        archives = _write_archives(buildah, reference, image_id, f"{REPOSITORY}:{version}")
    return Built(reference, image_id, buildah.image_size(reference), archives)


def _labels(inspected: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = inspected["OCIv1"]["config"].get("Labels") or {}
    return labels


def _base_identity(buildah: Buildah, base: str) -> str:
    """The base image's ID where the store has it (a rebuilt base changes it), else its name."""
    inspected = buildah.image(base)
    return str(inspected["FromImageID"]) if inspected else base


# -- what the build reads ------------------------------------------------------


def build_inputs_digest(build_args: Sequence[str], base: str) -> str:
    """A digest of everything the build reads: Dockerfile, build context (after .dockerignore), args, base."""
    digest = hashlib.sha256()
    for part in ("Dockerfile", *build_args, base):
        digest.update(part.encode() + b"\0")
    digest.update((REPO / "Dockerfile").read_bytes())
    for path in context_files(REPO):
        mode = (REPO / path).stat().st_mode & 0o111
        digest.update(f"{path}\0{mode:o}\0".encode())
        digest.update(hashlib.sha256((REPO / path).read_bytes()).digest())
    return digest.hexdigest()


def context_files(root: Path) -> list[str]:
    """Files of the build context, relative to ``root``, as .dockerignore selects them."""
    ignore = root / ".dockerignore"
    rules = _ignore_rules(ignore.read_text()) if ignore.is_file() else []
    exceptions = [rule.glob for rule in rules if rule.exception]
    found: list[str] = [".dockerignore"] if ignore.is_file() else []
    for folder, dirs, files in os.walk(root):
        relative = Path(folder).relative_to(root).as_posix()
        prefix = "" if relative == "." else f"{relative}/"
        # An ignored folder is walked only if an exception may re-include something inside it.
        dirs[:] = sorted(
            d for d in dirs if not _ignored(prefix + d, rules) or any(_may_reach(e, prefix + d) for e in exceptions)
        )
        found += [prefix + f for f in sorted(files) if not _ignored(prefix + f, rules)]
    return sorted(set(found))


@dataclass(frozen=True)
class _IgnoreRule:
    exception: bool  # a `!` line: re-includes what it matches
    glob: str
    regex: re.Pattern[str]


def _ignore_rules(text: str) -> list[_IgnoreRule]:
    """The .dockerignore's rules in order: the last one that matches a path decides."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        glob = os.path.normpath(line.removeprefix("!").strip()).strip("/")
        rules.append(_IgnoreRule(line.startswith("!"), glob, re.compile(_glob_regex(glob))))
    return rules


def _glob_regex(glob: str) -> str:
    """Docker's .dockerignore globs: `*` and `?` stay within a path segment, `**` spans segments."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return out


def _ignored(path: str, rules: Sequence[_IgnoreRule]) -> bool:
    """Whether .dockerignore leaves ``path`` out: a rule matches a path or any folder above it."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for rule in rules:
        if any(rule.regex.fullmatch(candidate) for candidate in candidates):
            ignored = not rule.exception
    return ignored


def _may_reach(exception: str, folder: str) -> bool:
    """Whether an exception's glob could match something inside ``folder``."""
    literal = re.split(r"[*?\[]", exception, maxsplit=1)[0]
    if len(literal) < len(exception):  # a glob: compare only the folders before it
        literal = literal.rpartition("/")[0]
        return literal == "" or f"{folder}/".startswith(f"{literal}/") or literal.startswith(f"{folder}/")
    return exception.startswith(f"{folder}/")


def _write_archives(buildah: Buildah, reference: str, image_id: str, name: str) -> tuple[Path, ...]:
    """The OCI archive and docker-archive of the image, rewritten only when the image changed."""
    ARCHIVE_DIR.mkdir(parents=True, exist_ok=True)
    stem = name.replace(":", "-")
    archives = {"oci-archive": ARCHIVE_DIR / f"{stem}.oci.tar", "docker-archive": ARCHIVE_DIR / f"{stem}.docker.tar"}
    stamp = ARCHIVE_DIR / f"{stem}.image-id"
    if stamp.is_file() and stamp.read_text() == image_id and all(p.is_file() for p in archives.values()):
        return tuple(archives.values())
    stamp.unlink(missing_ok=True)
    for transport, path in archives.items():
        path.unlink(missing_ok=True)
        buildah.run("push", "--quiet", reference, f"{transport}:{path}:{name}")
    stamp.write_text(image_id)
    return tuple(archives.values())


def _build_with_docker(version: str, python_image: str | None, write_archives: bool) -> Built:
    reference = f"{REPOSITORY}:{version}"
    _say(f"building {reference} with Docker")
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}  # build secrets need BuildKit
    build = ["docker", "build", *_build_args(python_image), *_secret_args(), "--tag", reference, str(REPO)]
    if subprocess.run(build, env=env, check=False).returncode != 0:
        raise ImageError("docker build failed (its output is above)")
    inspected = json.loads(
        subprocess.run(["docker", "image", "inspect", reference], capture_output=True, text=True, check=True).stdout
    )[0]
    archives: tuple[Path, ...] = ()
    if write_archives:
        ARCHIVE_DIR.mkdir(parents=True, exist_ok=True)
        # `docker save` writes a docker-archive that is also an OCI image layout (Docker 25 and later).
        path = ARCHIVE_DIR / f"{reference.replace(':', '-')}.docker.tar"
        subprocess.run(["docker", "save", "--output", str(path), reference], check=True)
        archives = (path,)
    return Built(reference, inspected["Id"], int(inspected["Size"]), archives)


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.image", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--python-image",
        help="base image with python3 (default: the Dockerfile's with Docker, Debian made by debootstrap with buildah)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        built = build_image(args.python_image)
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"image {built.reference} ({built.image_id[:12]}): {_mib(built.size_bytes)} unpacked")
    for archive in built.archives:
        print(f"  {archive.relative_to(REPO)}: {_mib(archive.stat().st_size)}")
    print(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
