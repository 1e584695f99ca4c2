"""A private Docker engine and the locally built sandbox image (no registry needed).

* :func:`start_private_dockerd` runs ``dockerd`` with its own socket, data root, exec root and
  pidfile under one directory, without bridge, iptables or IP forwarding, so it neither
  touches the host's network nor collides with a system engine. :meth:`Engine.stop` stops it
  and removes its containers, mounts and files.
* :func:`build_image` makes the sandbox image from the host's own Python: the interpreter,
  its shared libraries (found with ``ldd``) and the standard library (without tests, GUI
  toolkits and site-packages) at the same paths, imported with ``docker import``. It takes a
  few seconds and needs no network.
* :func:`ensure_engine` / :func:`ensure_image` reuse what exists; the test fixture and the
  benchmark use them.

Command line (what ``scripts/start-dockerd.sh`` and ``scripts/build-sandbox-image.sh`` run)::

    python -m sandboxes.docker_engine start [--root DIR]   # prints DOCKER_HOST=unix://...
    python -m sandboxes.docker_engine build [--host URL]
    python -m sandboxes.docker_engine stop [--root DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
from dataclasses import dataclass

from sandboxes.errors import SandboxUnavailableError

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_ROOT",
    "Engine",
    "build_image",
    "ensure_engine",
    "ensure_image",
    "start_private_dockerd",
]

DEFAULT_ROOT = "/tmp/rlrf-dockerd"
# Bump the suffix whenever the image layout changes, so that stale images are not reused.
DEFAULT_IMAGE = f"rlrf-sandbox:py{sys.version_info[0]}.{sys.version_info[1]}-3"
_STDLIB_SKIP = {
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
    "pydoc_data", "unittest/test", "distutils/tests",
}  # fmt: skip


@dataclass
class Engine:
    """A Docker engine: its URL and, when this process started it, how to stop it."""

    base_url: str
    root: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def private(self) -> bool:
        """True when this process started the engine (and :meth:`stop` will stop it)."""
        return self.root is not None

    def stop(self) -> None:
        """Stop a private engine, remove its containers, mounts and files; no-op otherwise."""
        if self.root is None:
            return
        stop_private_dockerd(self.root, self.proc)
        self.root = None


def _client(base_url: str, timeout: int = 60):
    try:
        import docker
    except ImportError as e:  # pragma: no cover - docker is a dependency
        raise SandboxUnavailableError("the 'docker' package is not installed") from e
    return docker.DockerClient(base_url=base_url, timeout=timeout)


def engine_responds(base_url: str) -> bool:
    """Whether a Docker engine answers at ``base_url``."""
    try:
        c = _client(base_url, timeout=5)
        try:
            return bool(c.ping())
        finally:
            c.close()
    except Exception:
        return False


def _install_dockerd() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SandboxUnavailableError(
            "dockerd is not installed and cannot be installed here (needs root and apt-get); "
            "install Docker, or run scripts/start-dockerd.sh on a machine that has it"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "docker.io"]
    r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600, check=False)
    if r.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600,
                       check=False)  # fmt: skip
        r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600,
                           check=False)  # fmt: skip
    if r.returncode != 0 or shutil.which("dockerd") is None:
        raise SandboxUnavailableError(
            f"'apt-get install -y docker.io' failed (exit {r.returncode}): {r.stderr[-500:]}"
        )


SYSTEM_SOCKET_URL = "unix:///var/run/docker.sock"


def private_url(root: str = DEFAULT_ROOT) -> str:
    """The socket URL of the private dockerd under ``root`` (scripts/start-dockerd.sh)."""
    return f"unix://{os.path.join(root, 'docker.sock')}"


def start_private_dockerd(
    root: str = DEFAULT_ROOT, *, install: bool = True, timeout: float = 60.0
) -> Engine:
    """Start a dockerd with a private socket, data root and pidfile under ``root``.

    Raises:
        SandboxUnavailableError: not root, no dockerd (and no way to install it), or the
            daemon did not answer within ``timeout`` seconds (its log is quoted).

    """
    base_url = private_url(root)
    if engine_responds(base_url):
        return Engine(base_url, root=root, proc=None)
    if os.geteuid() != 0:
        raise SandboxUnavailableError(
            "starting a private dockerd needs root; set DOCKER_HOST to a running engine instead"
        )
    if shutil.which("dockerd") is None:
        if not install:
            raise SandboxUnavailableError("dockerd is not installed (apt-get install docker.io)")
        _install_dockerd()
    os.makedirs(root, mode=0o700, exist_ok=True)
    log_path = os.path.join(root, "dockerd.log")
    cmd = [
        "dockerd",
        "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
        "--ip-masq=false", "--userland-proxy=false",
        f"--host={base_url}",
        f"--data-root={os.path.join(root, 'data')}",
        f"--exec-root={os.path.join(root, 'exec')}",
        f"--pidfile={os.path.join(root, 'docker.pid')}",
        "--log-level=warn",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if engine_responds(base_url):
            return Engine(base_url, root=root, proc=proc)
        time.sleep(0.25)
    with contextlib.suppress(Exception):
        proc.kill()
    with open(log_path, errors="replace") as f:
        tail = f.read()[-1500:]
    raise SandboxUnavailableError(f"dockerd did not start (exit {proc.poll()}); log:\n{tail}")


def _mounts_under(root: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    points = [p.encode().decode("unicode_escape") for p in points]
    return sorted((p for p in points if p == root or p.startswith(root + "/")), reverse=True)


def stop_private_dockerd(root: str = DEFAULT_ROOT, proc: subprocess.Popen | None = None) -> None:
    """Stop the dockerd under ``root``: remove its containers, stop it, unmount, delete files."""
    base_url = private_url(root)
    if engine_responds(base_url):
        with contextlib.suppress(Exception):
            c = _client(base_url)
            for ctr in c.containers.list(all=True):
                with contextlib.suppress(Exception):
                    ctr.remove(force=True)
            c.close()
    pid = None
    if proc is not None:
        pid = proc.pid
    else:
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(root, "docker.pid")) as f:
                pid = int(f.read().strip())
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            if proc is None and not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if proc is not None:
                proc.wait()
    for mnt in _mounts_under(root):
        subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


def ensure_engine(start: bool = True, root: str = DEFAULT_ROOT) -> Engine:
    """Return a running engine: ``DOCKER_HOST``, the system socket, or a private dockerd.

    An engine that was already running (even a private one) is not stopped by
    :meth:`Engine.stop`; one started here is.

    Raises:
        SandboxUnavailableError: no engine answers and ``start`` is False or starting failed.

    """
    candidates = []
    if os.environ.get("DOCKER_HOST"):
        candidates.append(os.environ["DOCKER_HOST"])
    candidates.append(SYSTEM_SOCKET_URL)
    candidates.append(private_url(root))  # scripts/start-dockerd.sh
    for url in candidates:
        if engine_responds(url):
            return Engine(url)
    if not start:
        raise SandboxUnavailableError(
            "no Docker engine answers (DOCKER_HOST, /var/run/docker.sock); start one with "
            "scripts/start-dockerd.sh"
        )
    return start_private_dockerd(root)


# --------------------------------------------------------------------------- the image


def _shared_libs(paths: list[str]) -> set[str]:
    libs: set[str] = set()
    for p in paths:
        r = subprocess.run(["ldd", p], capture_output=True, text=True, check=False)
        for line in r.stdout.splitlines():
            m = re.search(r"(/\S+)\s+\(0x", line)
            if m and os.path.exists(m.group(1)):
                libs.add(m.group(1))
    return libs


def _rootfs_tar(worker_script: str) -> bytes:
    """Build the image's root file system as an uncompressed tar, in memory."""
    exe = os.path.realpath(sys.executable)
    if sys.prefix != sys.base_prefix:  # a venv's python is a link to the base interpreter
        exe = os.path.realpath(os.path.join(sys.base_prefix, "bin", os.path.basename(exe)))
    stdlib = sysconfig.get_path("stdlib", vars={"base": sys.base_prefix})
    dynload = os.path.join(stdlib, "lib-dynload")
    so_files = [exe] + [os.path.join(dynload, f) for f in os.listdir(dynload) if f.endswith(".so")]
    libs = _shared_libs(so_files)
    buf = io.BytesIO()
    added: set[str] = set()

    def add_dirs(tar: tarfile.TarFile, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in added:
                added.add(d)
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)

    def add_file(tar: tarfile.TarFile, src: str, dst: str | None = None) -> None:
        dst = (dst or src).lstrip("/")
        if dst in added:
            return
        add_dirs(tar, "/" + dst)
        added.add(dst)
        info = tar.gettarinfo(src, arcname=dst)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode |= 0o444
        if info.isreg():
            with open(src, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)

    with tarfile.open(fileobj=buf, mode="w") as tar:
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777  # docker copies it onto the tmpfs
        tar.addfile(tmp)
        added.add("tmp")
        for d in ("dev", "proc", "sys", "etc", "opt/rlrf", "usr/bin"):
            add_dirs(tar, f"/{d}/x")
        add_file(tar, exe)
        for lib in sorted(libs):
            real = os.path.realpath(lib)
            add_file(tar, real)
            if real != lib:  # keep the soname link the loader looks for
                add_dirs(tar, lib)
                info = tarfile.TarInfo(lib.lstrip("/"))
                info.type, info.linkname = tarfile.SYMTYPE, real
                tar.addfile(info)
                added.add(lib.lstrip("/"))
        for root, dirs, files in os.walk(stdlib):
            rel = os.path.relpath(root, stdlib)
            dirs[:] = [
                d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in _STDLIB_SKIP
            ]
            for f in files:
                add_file(tar, os.path.join(root, f))
        link = tarfile.TarInfo("usr/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, exe
        tar.addfile(link)
        add_file(tar, worker_script, "/opt/rlrf/_worker.py")
    return buf.getvalue()


def build_image(base_url: str, tag: str = DEFAULT_IMAGE) -> str:
    """Build the sandbox image from the host's Python and import it as ``tag``; return the tag."""
    from sandboxes.local import _WORKER_SCRIPT

    data = _rootfs_tar(_WORKER_SCRIPT)
    client = _client(base_url, timeout=300)
    try:
        repo, _, version = tag.partition(":")
        client.api.import_image_from_data(data, repository=repo, tag=version or "latest")
        client.images.get(tag)
    except Exception as e:
        raise SandboxUnavailableError(f"could not import the sandbox image {tag}: {e}") from e
    finally:
        client.close()
    return tag


def ensure_image(base_url: str, tag: str = DEFAULT_IMAGE) -> str:
    """Return ``tag``, building the image first when the engine does not have it."""
    client = _client(base_url)
    try:
        client.images.get(tag)
        return tag
    except Exception:
        pass
    finally:
        client.close()
    return build_image(base_url, tag)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``start``, ``build`` or ``stop``."""
    ap = argparse.ArgumentParser(prog="python -m sandboxes.docker_engine", description=__doc__)
    ap.add_argument("action", choices=("start", "build", "stop"))
    ap.add_argument("--root", default=DEFAULT_ROOT, help="private dockerd directory")
    ap.add_argument("--host", default=None, help="engine URL for 'build' (default: private)")
    ap.add_argument("--tag", default=DEFAULT_IMAGE)
    args = ap.parse_args(argv)
    if args.action == "start":
        engine = start_private_dockerd(args.root)
        print(f"DOCKER_HOST={engine.base_url}")
    elif args.action == "build":
        url = args.host or private_url(args.root)
        t = time.monotonic()
        print(f"built {build_image(url, args.tag)} in {time.monotonic() - t:.1f} s")
    else:
        stop_private_dockerd(args.root)
        print(f"stopped the dockerd under {args.root}")


if __name__ == "__main__":
    main()
