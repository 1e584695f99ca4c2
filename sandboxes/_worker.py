"""A pre-forked sandbox worker: runs one untrusted program at a time, each in a fresh child.

This file is executed as a script (``python -I _worker.py``) by :mod:`sandboxes.local`, never
imported by the parent: it depends on the standard library only, so that a worker starts in a
few tens of milliseconds with a clean environment and no inherited state. It speaks a tiny
length-prefixed pickle protocol with its (trusted) parent on two private file descriptors.

Per worker, once: a private mount and network namespace (root) or a user+network namespace
(non-root), a tmpfs working directory, the Python directories exposed read-only, the Landlock
ruleset built, common modules imported. Per run: fork; in the child set the process group,
rlimits, uid/gid of this worker slot, no-new-privileges, Landlock, then compile and execute the
program; in the worker enforce the wall clock, cap the output, kill every process of the slot
uid afterwards and reset the working directory.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import pickle
import re
import resource
import select
import signal
import struct
import sys
import time

HARNESS_FILE = __file__
SOLUTION = "solution.py"
# The result channel may carry this much more than Limits.output_bytes (framing, markers).
CHANNEL_SLACK = 65536
_STDIN_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
# A JSON string, escapes included (the unrolled form: linear, no backtracking).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)

# Imported once here so that every child gets them for free (a fork shares the pages).
PRELOAD = (
    "array abc argparse ast atexit base64 bisect calendar cmath codecs collections "
    "collections.abc contextlib copy csv dataclasses datetime decimal enum fractions functools "
    "gc hashlib heapq io itertools json linecache math numbers operator pathlib pprint queue "
    "random re statistics string struct textwrap time traceback types typing unicodedata uuid "
    "warnings"
).split()

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

# Landlock (include/uapi/linux/landlock.h); the syscall numbers are the same on every arch.
SYS_LL_CREATE, SYS_LL_ADD, SYS_LL_RESTRICT = 444, 445, 446
LL_FS_EXECUTE = 1 << 0
LL_FS_WRITE_FILE = 1 << 1
LL_FS_READ_FILE = 1 << 2
LL_FS_READ_DIR = 1 << 3
LL_FS_TRUNCATE = 1 << 14
LL_FS_IOCTL_DEV = 1 << 15
# The rights a rule on a regular file may carry.
LL_FS_FILE_ONLY = (
    LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_READ_FILE | LL_FS_TRUNCATE | LL_FS_IOCTL_DEV
)
LL_NET_ALL = (1 << 0) | (1 << 1)  # BIND_TCP | CONNECT_TCP
LL_SCOPE_ALL = (1 << 0) | (1 << 1)  # ABSTRACT_UNIX_SOCKET | SIGNAL
LL_FS_BITS_BY_ABI = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16}


def _errno_text(what: str) -> str:
    e = ctypes.get_errno()
    return f"{what} failed: {os.strerror(e)} (errno {e})"


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), _errno_text(f"prctl({option})"))


def _mount(src: str, dst: str, fstype: str | None, flags: int, data: str | None) -> None:
    ok = _libc.mount(
        src.encode(),
        dst.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if ok != 0:
        raise OSError(ctypes.get_errno(), _errno_text(f"mount({src!r} -> {dst!r})"))


# --------------------------------------------------------------------------- Landlock


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def landlock_abi() -> int:
    """Return the Landlock ABI version of the running kernel, 0 when unavailable."""
    v = _libc.syscall(SYS_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return int(v) if v > 0 else 0


def build_ruleset(
    abi: int, rules: list[tuple[str, int]], write_dirs: list[str]
) -> tuple[int, list]:
    """Create the worker's Landlock ruleset (layer 1): ``rules`` readable, ``write_dirs`` writable.

    ``rules`` are ``(path, access)`` pairs from :func:`read_rules`. Everything else on the file
    system is denied (no ``execve`` anywhere), as are TCP bind/connect (ABI >= 4), signals and
    abstract unix sockets outside the domain (ABI >= 6). Returns (fd, notes).
    """
    fs_all = _fs_all(abi)
    attr = _RulesetAttr(fs_all, LL_NET_ALL if abi >= 4 else 0, LL_SCOPE_ALL if abi >= 6 else 0)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    fd = _libc.syscall(SYS_LL_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), _errno_text("landlock_create_ruleset"))
    rules = list(rules) + [(p, fs_all & ~LL_FS_EXECUTE) for p in write_dirs]
    rules += [(p, _dev_access(abi)) for p in DEV_FILES]
    notes = _add_rules(int(fd), rules, fs_all)
    return int(fd), notes


def _fs_all(abi: int) -> int:
    return (1 << LL_FS_BITS_BY_ABI.get(abi, 16)) - 1


def _dev_access(abi: int) -> int:
    return LL_FS_READ_FILE | LL_FS_WRITE_FILE | (LL_FS_TRUNCATE if abi >= 3 else 0)


def _add_rules(fd: int, rules: list[tuple[str, int]], fs_all: int) -> list[str]:
    notes = []
    for path, access in rules:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not os.path.isdir(path):
                access &= LL_FS_FILE_ONLY  # rules on files take file rights only
            rule = _PathBeneathAttr(access & fs_all, pfd)
            if _libc.syscall(SYS_LL_ADD, fd, 1, ctypes.byref(rule), 0) != 0:
                notes.append(_errno_text(f"landlock_add_rule({path})"))
        finally:
            os.close(pfd)
    return notes


def restrict_writes_to(abi: int, workdir: str) -> None:  # pragma: no cover - runs in the child
    """Stack a second Landlock layer: no write of any kind outside ``workdir`` (this run's).

    The worker's ruleset must allow writes beneath the whole slot directory, because a fresh
    tmpfs (a new inode) is mounted on the working directory for every run. This layer binds to
    the working directory of *this* run, so nothing a run writes can land beside it, where a
    later run could read it back or where it would fill the space every run shares.
    """
    handled = _fs_all(abi) & ~(LL_FS_READ_FILE | LL_FS_READ_DIR | LL_FS_EXECUTE)
    attr = _RulesetAttr(handled, 0, 0)
    fd = _libc.syscall(SYS_LL_CREATE, ctypes.byref(attr), ctypes.c_size_t(8), 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), _errno_text("landlock_create_ruleset (run layer)"))
    rules = [(workdir, handled)] + [(p, _dev_access(abi)) for p in DEV_FILES]
    notes = _add_rules(int(fd), rules, handled)
    if notes or _libc.syscall(SYS_LL_RESTRICT, fd, 0) != 0:
        raise OSError(ctypes.get_errno(), "; ".join(notes) or _errno_text("landlock_restrict_self"))
    os.close(fd)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def read_rules(roots: list[str], hidden: list[str]) -> list[tuple[str, int]]:
    """Landlock read rules for ``roots`` that leave every path in ``hidden`` unreadable.

    Landlock only grants; it cannot carve a subtree out of a granted one. So a root that holds a
    hidden directory gets a list-only rule, and each of its entries its own read rule, going down
    only along the way to the hidden directory. A hidden directory's *names* stay listable, its
    files never readable. Paths are compared after resolving symbolic links, since Landlock rules
    bind to the inodes they resolve to.
    """
    full = LL_FS_READ_FILE | LL_FS_READ_DIR
    real_hidden = {os.path.realpath(h) for h in hidden if os.path.exists(h)}
    out: list[tuple[str, int]] = []

    def grant(path: str) -> None:
        real = os.path.realpath(path)
        if any(_under(real, h) for h in real_hidden):
            return
        below = [h for h in real_hidden if _under(h, real)]
        if not below or not os.path.isdir(real):
            out.append((real, full))
            return
        out.append((real, LL_FS_READ_DIR))
        try:
            children = sorted(os.listdir(real))
        except OSError:
            return
        for name in children:
            grant(os.path.join(real, name))

    for root in roots:
        if os.path.exists(root):
            grant(root)
    return out


# --------------------------------------------------------------------------- seccomp

# One small filter, installed in every child: sockets only of the families a private network
# namespace confines (IP and netlink). A unix *pathname* socket is a file-system object that
# neither a network namespace nor Landlock (through ABI 7) guards: without this a program could
# connect to any world-writable socket on the host. Also refused: datagram socketpairs (their
# sendto() takes a pathname), io_uring (it opens sockets without the socket() system call),
# and every system call of a foreign ABI (i386 int 0x80, x32), which would bypass the numbers.
_SECCOMP_ARCH = {
    # machine: (AUDIT_ARCH_*, socket, socketpair, io_uring_setup, setsockopt, fcntl, x32 bit)
    "x86_64": (0xC000003E, 41, 53, 425, 54, 72, 0x40000000),
    "aarch64": (0xC00000B7, 198, 199, 425, 208, 25, 0),
}
# Also refused: kernel state that outlives a run and is not a file (Landlock does not see it),
# through which a run could leave data for a later one or reach the host's: System V IPC and
# POSIX message queues (a host's segment can be attached by id), the per-uid key rings, bpf().
_SECCOMP_DENY = {
    "x86_64": (
        *(29, 30, 31, 64, 65, 66, 67, 68, 69, 70, 71, 220),  # shm*, sem*, msg*, semtimedop
        240,  # mq_open
        *(248, 249, 250),  # add_key, request_key, keyctl
        321,  # bpf
        *(319, 447),  # memfd_create, memfd_secret
    ),
    "aarch64": (
        *range(186, 198),  # msg*, sem*, shm*
        180,  # mq_open
        *(217, 218, 219),  # add_key, request_key, keyctl
        280,  # bpf
        *(279, 447),  # memfd_create, memfd_secret
    ),
}
# Also refused: memory a program holds through a file descriptor rather than its address space,
# which RLIMIT_AS never sees. memfd_create gave one process 50 files of Limits.file_size_bytes
# each (800 MiB of host shared memory under a 32 MiB cap); memfd_secret is the same in secret.
# Growing a socket's buffers (SO_SNDBUF/SO_RCVBUF, and the FORCE variants) let 30 unix
# socketpairs queue 235 MiB, growing pipes (F_SETPIPE_SZ) 30 pipes 30 MiB; at the kernel's
# default sizes they hold 6 and 2 MiB. What stays possible is bounded and listed in
# sandboxes/local.py's docstring.
AF_UNIX, AF_INET, AF_NETLINK, AF_INET6, SOCK_DGRAM = 1, 2, 16, 10, 2
SOL_SOCKET = 1
SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE = 7, 8, 32, 33
F_SETPIPE_SZ = 1031
_RET_ALLOW = 0x7FFF0000
_RET_EACCES = 0x00050000 | 13  # SECCOMP_RET_ERRNO | EACCES
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def seccomp_filter() -> bytes | None:
    """The BPF program described above for this machine, or None on an unknown architecture."""
    arch = _SECCOMP_ARCH.get(os.uname().machine)
    if arch is None:
        return None
    audit, nr_socket, nr_pair, nr_uring, nr_setsockopt, nr_fcntl, x32 = arch
    ld, jeq, jge, ja, ret, and_ = 0x20, 0x15, 0x35, 0x05, 0x06, 0x54
    # (label, code, true-target, false-target, k); BPF jumps go forward only, so the two
    # verdicts come last. A "ja" takes its target in k.
    prog = [
        ("", ld, None, None, 4),  # seccomp_data.arch
        ("", jeq, None, "deny", audit),
        ("", ld, None, None, 0),  # seccomp_data.nr
        ("", jge, "deny", None, x32 or 0xFFFFFFFF),
        ("", jeq, "socket", None, nr_socket),
        ("", jeq, "pair", None, nr_pair),
        ("", jeq, "setsockopt", None, nr_setsockopt),
        ("", jeq, "fcntl", None, nr_fcntl),
        ("", jeq, "deny", None, nr_uring),
        *[("", jeq, "deny", None, nr) for nr in _SECCOMP_DENY[os.uname().machine]],
        ("", ja, None, None, "allow"),
        ("socket", ld, None, None, 16),  # args[0]: the address family
        ("", jeq, "allow", None, AF_INET),
        ("", jeq, "allow", None, AF_INET6),
        ("", jeq, "allow", "deny", AF_NETLINK),
        ("pair", ld, None, None, 24),  # args[1]: the socket type (and flags)
        ("", and_, None, None, 0xF),
        ("", jeq, "deny", "allow", SOCK_DGRAM),
        ("setsockopt", ld, None, None, 24),  # args[1]: the level
        ("", jeq, None, "allow", SOL_SOCKET),
        ("", ld, None, None, 32),  # args[2]: the option
        ("", jeq, "deny", None, SO_SNDBUF),
        ("", jeq, "deny", None, SO_RCVBUF),
        ("", jeq, "deny", None, SO_SNDBUFFORCE),
        ("", jeq, "deny", "allow", SO_RCVBUFFORCE),
        ("fcntl", ld, None, None, 24),  # args[1]: the command
        ("", jeq, "deny", "allow", F_SETPIPE_SZ),
        ("allow", ret, None, None, _RET_ALLOW),
        ("deny", ret, None, None, _RET_EACCES),
    ]
    labels = {p[0]: i for i, p in enumerate(prog) if p[0]}
    out = bytearray()
    for i, (_label, code, t, f, k) in enumerate(prog):
        jt = labels[t] - i - 1 if t else 0
        jf = labels[f] - i - 1 if f else 0
        if isinstance(k, str):
            k = labels[k] - i - 1
        if not (0 <= jt < 256 and 0 <= jf < 256 and k >= 0):
            raise ValueError("seccomp jump out of range")
        out += struct.pack("=HBBI", code, jt, jf, k)
    return bytes(out)


def install_seccomp(prog: bytes) -> None:  # pragma: no cover - runs in the child
    """Install ``prog`` (from :func:`seccomp_filter`); needs no-new-privileges first."""
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    z = ctypes.c_ulong(0)
    if _libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), z, z):
        raise OSError(ctypes.get_errno(), _errno_text("prctl(PR_SET_SECCOMP)"))


# --------------------------------------------------------------------------- worker setup


def _others_can_traverse(path: str) -> str | None:
    """Return the first ancestor of ``path`` that others cannot search, or None."""
    parts = os.path.abspath(path).split("/")
    for i in range(2, len(parts) + 1):
        anc = "/".join(parts[:i]) or "/"
        try:
            if not os.stat(anc).st_mode & 0o001:
                return anc
        except OSError:
            return None
    return None


def _expose(read_paths: list[str]) -> None:
    """Make ``read_paths`` reachable by an unprivileged uid in this private mount namespace.

    A directory such as ``/root`` (mode 0700) above the interpreter would block every lazy
    import of a non-root child. It is covered with an empty tmpfs (which also hides the rest of
    it) and only the needed directories are bind-mounted back, read-only.
    """
    blocked: dict[str, list[str]] = {}
    for p in read_paths:
        anc = _others_can_traverse(p)
        if anc is not None and os.path.exists(p):
            blocked.setdefault(anc, []).append(p)
    for anc, paths in blocked.items():
        fds = {p: os.open(p, os.O_PATH | os.O_CLOEXEC) for p in paths}
        _mount("tmpfs", anc, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for p, pfd in fds.items():
            os.makedirs(p, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{pfd}", p, None, MS_BIND | MS_REC, None)
            _mount("none", p, None, MS_BIND | MS_REC | MS_RDONLY | 0x20, None)  # 0x20: REMOUNT
            os.close(pfd)


def python_paths(extra_hidden: list[str] = ()) -> tuple[list[str], list[str]]:
    """Return (readable roots, hidden paths): the interpreter without its installed packages.

    Readable: the system library directories (shared libraries), the time-zone database and
    the standard library (with ``lib-dynload``). Hidden inside them: every ``site-packages`` /
    ``dist-packages`` directory, every other ``sys.path`` entry (``.pth`` additions, editable
    installs) and ``extra_hidden``. Installed packages may ship grading data (this project's
    ``envs/data``, HumanEval's reference solutions), whatever the install layout, so a program
    sees none of them; only the packages a sandbox preloads are readable (see ``Worker``).
    """
    import glob
    import site
    import sysconfig

    roots = ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/share/zoneinfo"]
    hidden = set(extra_hidden)
    stdlib = set()
    for scheme_vars in (None, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        for key in ("stdlib", "platstdlib"):
            try:
                stdlib.add(sysconfig.get_path(key, vars=scheme_vars))
            except KeyError:
                pass
        for key in ("purelib", "platlib"):
            try:
                hidden.add(sysconfig.get_path(key, vars=scheme_vars))
            except KeyError:
                pass
    try:
        hidden.update(site.getsitepackages())
        hidden.add(site.getusersitepackages())
    except AttributeError:  # pragma: no cover - a virtualenv's old site.py
        pass
    for lib in roots + sorted(stdlib):
        for pattern in ("python*/site-packages", "python*/dist-packages", "site-packages"):
            hidden.update(glob.glob(os.path.join(lib, pattern)))
    real_stdlib = [os.path.realpath(p) for p in stdlib]
    for p in sys.path:
        if p and os.path.isdir(p) and not any(_under(os.path.realpath(p), s) for s in real_stdlib):
            hidden.add(p)
    roots += sorted(stdlib)
    return [r for r in roots if os.path.exists(r)], sorted(h for h in hidden if h)


def _package_dirs(modules: list[str]) -> list[str]:
    """The directories (or files) holding the given imported modules' top-level packages."""
    out = []
    for name in modules:
        mod = sys.modules.get(name.split(".")[0])
        spec = getattr(mod, "__spec__", None)
        locations = list(getattr(spec, "submodule_search_locations", None) or [])
        if not locations and getattr(mod, "__file__", None):
            locations = [mod.__file__]
        out.extend(locations)
        # Binary wheels keep their bundled shared libraries beside the package (numpy.libs).
        for loc in list(locations):
            libs = loc.rstrip("/") + ".libs"
            if os.path.isdir(libs):
                out.append(libs)
    return out


DEV_FILES = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]


class Worker:
    """State of one worker process (one slot of the pool)."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        # The Landlock write rule sits on the slot directory, not on the working directory: a
        # fresh tmpfs is mounted on the latter for every run, and a rule binds to an inode.
        self.slotdir: str = cfg["slotdir"]
        self.workdir: str = os.path.join(self.slotdir, "w")
        self.uid: int | None = cfg["uid"]
        self.layers: dict[str, bool] = {}
        self.warnings: list[str] = []
        self.is_root = os.geteuid() == 0
        self.ruleset_fd = -1
        self.tmpfs = False
        self.tmp_size = 0
        self.dirty = False
        self.recycle = False
        self._setup()
        if self.uid is not None:
            self._kill_uid()  # a replaced worker's leftovers, if any

    def _lost(self, layer: str, protection: str, why: str) -> None:
        self.layers[layer] = False
        self.warnings.append(f"{protection} is NOT enforced ({why})")

    def _setup(self) -> None:
        cfg = self.cfg
        if not self.is_root:
            self.uid = None
        if self.is_root:
            try:
                if _libc.unshare(CLONE_NEWNS | (CLONE_NEWNET if cfg["network_isolation"] else 0)):
                    raise OSError(ctypes.get_errno(), _errno_text("unshare"))
                _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
                self.layers["mount_namespace"] = True
                self.layers["network_namespace"] = bool(cfg["network_isolation"])
            except OSError as e:
                self._lost("network_namespace", "network isolation", str(e))
        elif cfg["network_isolation"]:
            uid, gid = os.getuid(), os.getgid()
            try:
                if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET):
                    raise OSError(ctypes.get_errno(), _errno_text("unshare(user+net)"))
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"{uid} {uid} 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"{gid} {gid} 1")
                self.layers["network_namespace"] = True
            except OSError as e:
                self._lost("network_namespace", "network isolation", str(e))
        if self.uid is None:
            self._lost(
                "slot_uid",
                "per-run uid separation (RLIMIT_NPROC per slot, killing setsid orphans, "
                "protection of your own files and processes by uid)",
                "not running as root",
            )
        else:
            self.layers["slot_uid"] = True
        for name in PRELOAD:
            try:
                __import__(name)
            except ImportError:
                pass
        preloaded = []
        for name in cfg.get("preload", ()):
            try:
                __import__(name)
                preloaded.append(name)
            except ImportError as e:
                self.warnings.append(f"preload of {name!r} failed: {e}")
        roots, hidden = python_paths(list(cfg.get("hidden_paths", ())))
        extra = _package_dirs(preloaded)
        if self.layers.get("mount_namespace"):
            try:
                _expose(roots + extra)
            except OSError as e:
                self.warnings.append(f"lazy imports of some modules may fail ({e})")
        os.makedirs(self.workdir, mode=0o711, exist_ok=True)
        self._reset_workdir(cfg["tmp_bytes"])
        self.abi = landlock_abi() if cfg["landlock"] else 0
        if self.abi:
            try:
                rules = read_rules(roots, hidden)
                rules += [(p, LL_FS_READ_FILE | LL_FS_READ_DIR) for p in extra]
                self.ruleset_fd, notes = build_ruleset(self.abi, rules, [self.slotdir])
                self.warnings.extend(notes)
                self.layers["landlock_fs"] = True
                self.layers["landlock_net"] = self.abi >= 4
                self.layers["landlock_signal_scope"] = self.abi >= 6
            except OSError as e:
                self._lost("landlock_fs", "file-system confinement (Landlock)", str(e))
        else:
            self._lost(
                "landlock_fs",
                "file-system confinement: reads outside the Python installation and writes "
                "outside the temporary directory",
                "Landlock disabled or not supported by this kernel",
            )
        self.seccomp = seccomp_filter() if cfg.get("seccomp", True) else None
        if self.seccomp is None:
            self._lost(
                "seccomp_sockets",
                "the socket filter (unix pathname sockets on the host, vsock, io_uring)",
                f"disabled, or no filter for the {os.uname().machine} architecture",
            )
        else:
            self.layers["seccomp_sockets"] = True
        if not self.tmpfs:
            self._lost(
                "tmpfs",
                "a per-run size cap on the temporary directory (Limits.file_size_bytes)",
                "tmpfs needs root",
            )

    def _reset_workdir(self, size: int) -> None:
        """Give the next run an empty working directory (a fresh tmpfs when root)."""
        self.tmp_size = size
        self.dirty = False
        if self.is_root and self.layers.get("mount_namespace"):
            if self.tmpfs:
                _libc.umount2(self.workdir.encode(), MNT_DETACH)
            opts = f"size={max(size, 65536)},mode=0700,nr_inodes=4096"
            if self.uid is not None:
                opts += f",uid={self.uid},gid={self.uid}"
            try:
                _mount("tmpfs", self.workdir, "tmpfs", MS_NOSUID | MS_NODEV, opts)
                self.tmpfs = True
                return
            except OSError as e:
                self.tmpfs = False
                self.warnings.append(f"tmpfs working directory unavailable: {e}")
        # No tmpfs: move the whole directory out of the slot (so no run can reach it again)
        # and start the next run in a new, empty one.
        trash = os.path.join(
            os.path.dirname(self.slotdir), f".trash-{os.path.basename(self.slotdir)}"
        )
        self._remove_tree(trash)
        if os.path.lexists(self.workdir):
            os.rename(self.workdir, trash)
        os.mkdir(self.workdir, 0o700)
        if self.uid is not None:
            os.chown(self.workdir, self.uid, self.uid)
        if not self._remove_tree(trash):
            self.recycle = True  # a container holding leftovers is replaced

    @staticmethod
    def _remove_tree(path: str) -> bool:
        """Remove ``path`` even where a program took away permissions; True when it is gone."""
        import shutil
        import stat

        def fix(func, p, _exc) -> None:
            try:
                os.chmod(os.path.dirname(p), stat.S_IRWXU)
                if os.path.isdir(p) and not os.path.islink(p):
                    os.chmod(p, stat.S_IRWXU)
                func(p)
            except OSError:
                pass

        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, onerror=fix)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        return not os.path.lexists(path)

    def hello(self) -> dict:
        """Describe this worker to the parent (layers in force, warnings)."""
        return {
            "pid": os.getpid(),
            "layers": self.layers,
            "warnings": self.warnings,
            "landlock_abi": self.abi,
        }

    # ----------------------------------------------------------------------- one run

    def run(self, req: dict) -> dict:
        """Execute one request in a fresh child and report what happened."""
        t0 = time.monotonic()
        lim = req["limits"]
        files: dict[str, bytes] = req["files"]
        wall_limit = float(lim["wall_time_s"])
        cap = int(lim["output_bytes"])
        if self.dirty or self.tmp_size != int(lim["file_size_bytes"]):
            self._reset_workdir(int(lim["file_size_bytes"]))
        try:
            for name, data in files.items():
                path = os.path.join(self.workdir, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
            with open(
                os.path.join(self.workdir, SOLUTION), "w", encoding="utf-8", errors="surrogatepass"
            ) as f:
                f.write(req["code"])
            if self.uid is not None:
                for root, dirs, fnames in os.walk(self.workdir):
                    for n in dirs + fnames:
                        os.chown(os.path.join(root, n), self.uid, self.uid)
        except OSError as e:
            self._reset_workdir(int(lim["file_size_bytes"]))
            return {"status": "sandbox_error", "message": f"could not write files: {e}"}
        stdin_fd = os.memfd_create("stdin", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(stdin_fd, req["stdin"]) if req["stdin"] else None
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        # The program's fd 0 is this read-write memory file: sealed, it cannot be grown into
        # memory that no limit counts (the filter refuses the program memfds of its own).
        fcntl.fcntl(stdin_fd, fcntl.F_ADD_SEALS, _STDIN_SEALS)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ch_r, ch_w = os.pipe()
        vm_base = _vm_size()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                self._child(req, stdin_fd, out_w, err_w, ch_w, vm_base)
            finally:
                os._exit(120)
        for fd in (stdin_fd, out_w, err_w, ch_w):
            os.close(fd)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        pidfd = os.pidfd_open(pid)
        bufs = {out_r: bytearray(), err_r: bytearray(), ch_r: bytearray()}
        caps = {out_r: cap, err_r: cap, ch_r: cap + CHANNEL_SLACK}
        over = {out_r: False, err_r: False, ch_r: False}
        poller = select.poll()
        for fd in bufs:
            poller.register(fd, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        open_fds = set(bufs)
        deadline = t0 + wall_limit
        timed_out = output_over = exited = False
        while open_fds or not exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = not exited
                break
            events = poller.poll(max(1, int(remaining * 1000) + 1) if not exited else 0)
            if not events and exited:
                break  # the program is gone; leftovers are killed below
            for fd, _ev in events:
                if fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    continue
                buf = bufs[fd]
                room = caps[fd] - len(buf)
                if len(chunk) > room:
                    buf += chunk[: max(room, 0)]
                    over[fd] = True
                    output_over = True
                else:
                    buf += chunk
            if output_over:
                break
        self._kill_all(pid)
        _, wstatus, ru = os.wait4(pid, 0)
        self._reap_leftovers()
        wall = time.monotonic() - t0
        # Drain what the program wrote before it was killed (pipes close once all are dead).
        for fd in list(open_fds):
            try:
                os.set_blocking(fd, False)
                while len(bufs[fd]) <= caps[fd]:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    bufs[fd] += chunk
            except (BlockingIOError, OSError):
                pass
        for fd in (out_r, err_r, ch_r, pidfd):
            os.close(fd)
        for fd in (out_r, err_r):
            if len(bufs[fd]) > cap:
                del bufs[fd][cap:]
                over[fd] = True
        self.dirty = True  # reset after the reply is sent, off the caller's critical path
        cpu = ru.ru_utime + ru.ru_stime
        return self._verdict(
            req,
            wstatus,
            cpu,
            wall,
            bytes(bufs[out_r]),
            bytes(bufs[err_r]),
            bytes(bufs[ch_r]),
            over[out_r],
            over[err_r],
            over[ch_r],
            timed_out,
            output_over and not timed_out,
        )

    def _kill_all(self, pid: int | None) -> None:
        """Kill the program's process group and every process it left behind.

        The worker is a child subreaper, so every orphan (double fork, ``setsid``) is
        reparented to it: "the worker has no child left" proves that nothing survived.
        """
        try:
            if pid is not None:
                os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass

    def _reap_leftovers(self) -> None:
        """After the main child is reaped, kill and reap descendants until none is left."""
        for attempt in range(200):
            if not _reap_children():
                return
            if self.uid is not None:
                self._kill_uid()
            else:
                for child in _direct_children():
                    for kill in (os.killpg, os.kill):
                        try:
                            kill(child, signal.SIGKILL)
                        except OSError:
                            pass
            time.sleep(min(0.0005 * attempt, 0.02))
        self.warnings.append("some processes of a run could not be killed")

    def _kill_uid(self) -> None:
        """Send SIGKILL to every process of the slot uid (``kill(-1)`` as that uid)."""
        killer = os.fork()
        if killer == 0:  # pragma: no cover - runs in the killer child
            try:
                os.setresgid(self.uid, self.uid, self.uid)
                os.setresuid(self.uid, self.uid, self.uid)
                # A few rounds: a process being forked during one scan is caught by the next.
                for _ in range(3):
                    os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                os._exit(0)
            except BaseException:
                os._exit(1)
            os._exit(0)
        os.waitpid(killer, 0)

    def _verdict(
        self,
        req: dict,
        wstatus: int,
        cpu: float,
        wall: float,
        out: bytes,
        err: bytes,
        chan: bytes,
        out_over: bool,
        err_over: bool,
        chan_over: bool,
        timed_out: bool,
        output_over: bool,
    ) -> dict:
        lim = req["limits"]
        events, malformed = _channel_events(chan)
        kinds = {t for t, _ in events}
        ret = next((v for t, v in events if t == "ret"), None)
        ret = ret if isinstance(ret, str) and not chan_over else None
        code = os.waitstatus_to_exitcode(wstatus)
        exit_code, sig = (code, None) if code >= 0 else (None, -code)
        completed = ("done" in kinds) and exit_code == 0
        message = ""
        if timed_out:
            status = "timeout"
            message = f"killed after {wall:.2f} s of wall time (limit {lim['wall_time_s']} s)"
        elif output_over:
            status = "output_limit"
            if out_over or err_over:
                which = "stdout" if out_over else "stderr"
                message = f"{which} exceeded {lim['output_bytes']} bytes; the program was killed"
            else:
                message = (
                    f"the result channel exceeded {lim['output_bytes'] + CHANNEL_SLACK} bytes "
                    "(the function's return value is too large); the program was killed"
                )
        elif sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= lim["cpu_time_s"] - 0.05):
            status = "timeout"
            message = f"CPU time limit of {lim['cpu_time_s']} s exceeded ({cpu:.2f} s used)"
        elif (exit_code == 1 and _last_line(err).startswith(b"MemoryError")) or (
            sig in (signal.SIGABRT, signal.SIGSEGV) and b"MemoryError" in err
        ):
            # Judged from how the program ended, never from the result channel, which carries
            # the program's answer only (a program raising MemoryError itself looks the same,
            # and gains nothing by it).
            status = "memory_limit"
            message = f"memory limit of {lim['memory_bytes']} bytes exceeded (MemoryError)"
        elif sig is not None:
            status = "runtime_error"
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            hint = " (stack overflow or a crash in native code)" if sig == signal.SIGSEGV else ""
            message = f"killed by signal {name}{hint}"
        elif exit_code != 0:
            status = "runtime_error"
            message = f"exited with code {exit_code}"
        elif req["call"] is not None and ret is None and malformed:
            status = "runtime_error"
            message = (
                f"no return value from {req['call'][0]}(): the result channel (file descriptor "
                f"3) held {malformed} line(s) the harness did not write; a program that writes "
                "there itself gets no verdict but this failure"
            )
        elif req["call"] is not None and ret is None:
            status = "runtime_error"
            message = (
                f"the program exited (code 0) before {req['call'][0]}() returned a value; "
                "sys.exit()/os._exit() during a function-call test is a failure"
            )
        else:
            status = "ok"
        return {
            "status": status,
            "exit_code": exit_code,
            "signal": sig,
            "stdout": out,
            "stderr": err,
            "stdout_truncated": out_over,
            "stderr_truncated": err_over,
            "result_truncated": chan_over,
            "wall_time_s": wall,
            "cpu_time_s": cpu,
            "return_json": ret if req["call"] is not None else None,
            "completed": completed and (req["call"] is None or ret is not None),
            "message": message,
        }

    # ----------------------------------------------------------------------- the child

    def _child(
        self, req: dict, stdin_fd: int, out_w: int, err_w: int, ch_w: int, vm_base: int
    ) -> None:  # pragma: no cover - runs in the child
        lim = req["limits"]
        os.setpgid(0, 0)
        os.dup2(stdin_fd, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(ch_w, 3)
        keep = 4
        if self.ruleset_fd >= 0:
            os.dup2(self.ruleset_fd, keep)
        else:
            try:
                os.close(keep)
            except OSError:
                pass
        os.closerange(keep + 1, 1 << 16)
        os.chdir(self.workdir)
        mem = int(lim["memory_bytes"])
        cpu_soft = max(1, int(-(-float(lim["cpu_time_s"]) // 1)))
        setr = resource.setrlimit
        setr(resource.RLIMIT_AS, (vm_base + mem, vm_base + mem))
        setr(resource.RLIMIT_CPU, (cpu_soft, cpu_soft + 1))
        setr(resource.RLIMIT_FSIZE, (int(lim["file_size_bytes"]),) * 2)
        setr(resource.RLIMIT_NOFILE, (int(lim["open_files"]),) * 2)
        setr(resource.RLIMIT_CORE, (0, 0))
        setr(resource.RLIMIT_MEMLOCK, (0, 0))
        setr(resource.RLIMIT_MSGQUEUE, (0, 0))
        if self.uid is None and self.cfg.get("nproc_offset") is not None:
            # A uid of its own (a container's) but no switch: the worker counts as one more.
            nproc = int(lim["processes"]) + int(self.cfg["nproc_offset"])
            setr(resource.RLIMIT_NPROC, (nproc, nproc))
        if self.uid is not None:
            setr(resource.RLIMIT_NPROC, (int(lim["processes"]),) * 2)
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
            os.setresuid(self.uid, self.uid, self.uid)
        # After setuid: a credential change clears the parent-death signal.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if self.ruleset_fd >= 0:
            if _libc.syscall(SYS_LL_RESTRICT, keep, 0) != 0:
                os.write(2, (_errno_text("landlock_restrict_self") + "\n").encode())
                os._exit(121)
            os.close(keep)
            try:
                restrict_writes_to(self.abi, self.workdir)
            except OSError as e:
                os.write(2, f"{e}\n".encode())
                os._exit(121)
        if self.seccomp is not None:
            try:
                install_seccomp(self.seccomp)
            except OSError as e:
                os.write(2, f"{e}\n".encode())
                os._exit(121)
        os.environ.clear()
        os.environ.update({"HOME": self.workdir, "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"})
        _run_program(req, self.workdir)


def _channel_events(chan: bytes) -> tuple[list[tuple[str, object]], int]:
    """The harness's messages on the result channel, and how many lines were anything else.

    The program owns file descriptor 3 and may write anything there, so nothing on it may make
    the worker fail: a worker error is a ``sandbox_error``, a *missing* reward, and a program
    that wrote ``'[' * 5000`` (``json.loads`` raised ``RecursionError``) turned its 0 into
    that. A harness message is one flat object (``{"t": ..., "v": "<json text>"}``): a line
    with a bracket outside its strings, or a second brace, is refused before it is parsed.
    """
    events: list[tuple[str, object]] = []
    malformed = 0
    for line in chan.splitlines():
        if not line.strip():
            continue
        shape = _JSON_STRING.sub(b'""', line)
        if b"[" in shape or shape.count(b"{") != 1:
            malformed += 1
            continue
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            malformed += 1
            continue
        if isinstance(msg, dict) and isinstance(msg.get("t"), str):
            events.append((msg["t"], msg.get("v")))
        else:
            malformed += 1
    return events, malformed


def _last_line(data: bytes) -> bytes:
    """The last non-empty line of ``data`` (where a traceback names its exception)."""
    lines = data.rstrip().rsplit(b"\n", 1)
    return lines[-1].strip() if lines else b""


def _reap_children() -> bool:
    """Reap every exited child; return True while some child is still alive."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _direct_children() -> list[int]:
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return pids


def _vm_size() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _user_tb(tb):
    """Drop the harness's own frames from the head of a traceback."""
    while tb is not None and tb.tb_frame.f_code.co_filename == HARNESS_FILE:
        tb = tb.tb_next
    return tb


def _run_program(req: dict, workdir: str) -> None:  # pragma: no cover - runs in the child
    """Compile and execute the submitted program as ``__main__``; never returns."""
    import atexit
    import io
    import linecache
    import random
    import traceback

    dumps = json.dumps
    chan = 3

    def send(msg: dict) -> None:
        try:
            os.write(chan, (dumps(msg) + "\n").encode())
        except OSError:
            pass

    atexit._clear()
    random.seed()
    sys.stdin = io.TextIOWrapper(
        io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="surrogateescape"
    )
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        write_through=False,
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    sys.argv = [SOLUTION]
    sys.path.insert(0, workdir)
    code: str = req["code"]
    linecache.cache[SOLUTION] = (len(code), None, code.splitlines(True), SOLUTION)
    import types

    main = types.ModuleType("__main__")
    main.__file__ = os.path.join(workdir, SOLUTION)
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    exit_code = 0
    call = req["call"]
    stderr = sys.stderr
    try:
        try:
            compiled = compile(code, SOLUTION, "exec", dont_inherit=True)
            exec(compiled, main.__dict__)
            if call is None:
                send({"t": "done"})
            else:
                entry, args_json = call
                fn = main.__dict__.get(entry)
                if not callable(fn):
                    raise NameError(
                        f"the program defines no function {entry!r} (function-call test)"
                    )
                value = fn(*json.loads(args_json))
                try:
                    text = dumps(value, allow_nan=False)
                except (TypeError, ValueError) as e:
                    raise TypeError(
                        f"{entry}() returned a value that is not strict JSON "
                        f"({type(value).__name__}): {e}"
                    ) from None
                send({"t": "ret", "v": text})
                send({"t": "done"})
        except SystemExit as e:
            if e.code is None:
                exit_code = 0
            elif isinstance(e.code, int):
                exit_code = e.code & 0xFF
            else:
                exit_code = 1
                print(e.code, file=stderr)
        except MemoryError as e:
            exit_code = 1
            try:
                traceback.print_exception(type(e), e, _user_tb(e.__traceback__), file=stderr)
                stderr.flush()
            except BaseException:
                os.write(2, b"\nMemoryError\n")
        except BaseException as e:
            exit_code = 1
            traceback.print_exception(type(e), e, _user_tb(e.__traceback__), file=stderr)
        try:
            atexit._run_exitfuncs()
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, stderr):
            try:
                stream.flush()
            except BaseException:
                pass
    except MemoryError:
        os.write(2, b"\nMemoryError\n")
        exit_code = 1
    finally:
        os._exit(exit_code)


# --------------------------------------------------------------------------- main loop


def _read_exact(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _send(fd: int, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack(">Q", len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def main() -> None:
    """Serve requests from the parent until it closes the control pipe."""
    # The control channel moves off fds 0/1 so that a child's stdio can never reach it.
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # No parent-death signal here: it fires when the parent *thread* that spawned the worker
    # exits (run_many's threads do). The worker exits on EOF of its control pipe instead.
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    (n,) = struct.unpack(">Q", _read_exact(ctl_in, 8))
    cfg = pickle.loads(_read_exact(ctl_in, n))
    worker = Worker(cfg)
    # Frozen objects are never scanned by the collector, so a child's first collection does
    # not touch (and copy-on-write) every page inherited from the worker.
    import gc

    gc.collect()
    gc.freeze()
    _send(ctl_out, worker.hello())
    while True:
        try:
            (n,) = struct.unpack(">Q", _read_exact(ctl_in, 8))
        except EOFError:
            break
        req = pickle.loads(_read_exact(ctl_in, n))
        try:
            reply = worker.run(req)
        except Exception as e:  # a bug here must not hang the parent
            reply = {"status": "sandbox_error", "message": f"worker error: {e!r}"}
        if worker.recycle:
            reply["recycle"] = True  # leftovers it could not remove: replace this worker
        _send(ctl_out, reply)
        if worker.dirty:
            worker._reset_workdir(worker.tmp_size)
    if worker.tmpfs:
        _libc.umount2(worker.workdir.encode(), MNT_DETACH)
    sys.exit(0)


if __name__ == "__main__":
    main()
