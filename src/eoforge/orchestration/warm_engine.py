"""A warm engine for flow runs: one process holds Prefect's, eoforge's and great-expectations'
imports and forks a child per flow run, so a run starts in milliseconds instead of paying ~5 s
of imports on its own (measured in ADR 0012).

- ``python -m eoforge.orchestration.warm_engine serve --socket PATH`` starts the engine (beside
  a process worker, with the worker's environment);
- ``python -m eoforge.orchestration.warm_engine run`` is the command a process worker runs for a
  flow run instead of ``python -m prefect.engine`` (the ``infer`` deployment's job variable
  ``command``): with ``EOFORGE_WARM_ENGINE`` naming a live engine's socket, it hands the engine
  its environment, working directory and standard streams, forwards SIGTERM / SIGINT to the
  forked run and exits with its status; without one it becomes ``python -m prefect.engine``.

The client part imports nothing beyond the standard library (and, run with ``-m``, eoforge's
package init: 0.15 s). A client that dies without a word (SIGKILL) takes its run with it: the
engine sees its socket close and sends the run SIGTERM, then SIGKILL after ``ORPHAN_GRACE_S``.
Limit: the engine must share the worker's environment (modules keep what they read at import).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

#: Environment variable naming the engine's Unix socket (set for the worker and the engine).
SOCKET_ENV = "EOFORGE_WARM_ENGINE"
#: Modules imported once by the engine (what an infer run imports on its own).
PRELOAD = (
    "prefect.engine",
    "prefect.flow_engine",
    "eoforge.orchestration.flows.infer",
    "eoforge.contracts.validation",
    "great_expectations",
    "eoforge.runs.stages_data",
    "eoforge.runs.stages_model",
    "eoforge.cube.build",
    "eoforge.inference.predict",
    "eoforge.inference.drift",
    "onnxruntime",
    # the CPU runtime (ADR 0015); importing it starts no thread, so forking after it is safe
    "openvino",
    "scipy.ndimage",
    "scipy.stats",
)
_MAX_MESSAGE = 1 << 20


def _send(sock: socket.socket, payload: dict[str, object], fds: list[int]) -> None:
    data = json.dumps(payload).encode()
    sock.sendmsg(
        [len(data).to_bytes(4, "big"), data],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
    )


def _receive(sock: socket.socket) -> tuple[dict[str, object], list[int]]:
    fds = array.array("i")
    msg, ancdata, _, _ = sock.recvmsg(_MAX_MESSAGE, socket.CMSG_LEN(3 * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    size = int.from_bytes(msg[:4], "big")
    body = msg[4:]
    while len(body) < size:
        body += sock.recv(size - len(body))
    return json.loads(body), list(fds)


def run_client() -> int:
    """Run the flow run of this process's environment in the warm engine, or start it cold."""
    path = os.environ.get(SOCKET_ENV)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not path:
            raise OSError("no warm engine configured")
        sock.connect(path)
        _send(sock, {"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv[1:]}, [0, 1, 2])
        reply = sock.makefile("r")
        pid = int(reply.readline())
    except (OSError, ValueError):
        sock.close()
        os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", *sys.argv[1:]])

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    line = reply.readline()  # the run's exit status, once it ended
    code = int(line) if line.strip() else 1
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it


def _child(request: dict[str, object], fds: list[int]) -> None:
    """In the forked child: become the flow run's process and run ``prefect.engine``."""
    import runpy
    import traceback

    code = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(str(request["cwd"]))
        env = request["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
        argv = request.get("argv") or []
        assert isinstance(argv, list)
        sys.argv = ["prefect.engine", *map(str, argv)]
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _claim_socket_path(path: Path) -> None:
    """Make ``path`` free for a new socket, removing only a stale socket (one nothing listens
    on): a file that is not a socket, or a live engine's socket, is never touched."""
    import stat

    from eoforge.errors import InputError

    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise InputError(
            f"warm engine socket path '{path}' exists and is not a socket; pass another --socket "
            f"(or ${SOCKET_ENV}) or move that file away."
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # a socket left by an engine that is gone
        return
    finally:
        probe.close()
    raise InputError(
        f"another warm engine already listens on '{path}'; stop it first or pass another --socket."
    )


#: Seconds an orphaned run (its client gone) gets after SIGTERM before SIGKILL.
ORPHAN_GRACE_S = 10.0


def _client_gone(pid: int, client: socket.socket, orphans: dict[int, float]) -> bool:
    """Whether a running flow run's readable client socket was closed; then the run gets
    SIGTERM now and SIGKILL after ``ORPHAN_GRACE_S`` (:func:`_reap_orphans`).

    A client never sends after its request, so a close means its process is gone: SIGKILLed
    by the worker once its cancellation grace period ran out, or crashed. The run must not live
    on unseen in the engine.
    """
    try:
        data = client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        data = b""
    if data:
        client.recv(len(data))  # not a close (clients send nothing else): drop it
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    orphans[pid] = time.monotonic()
    print(f"warm engine: the client of run pid {pid} is gone; run sent SIGTERM", flush=True)
    return True


def _reap_orphans(orphans: dict[int, float]) -> None:
    for pid, since in list(orphans.items()):
        if time.monotonic() - since > ORPHAN_GRACE_S:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def serve(path: Path, preload: tuple[str, ...] = PRELOAD) -> None:
    """Import ``preload``, then fork a flow run for every client until SIGTERM / SIGINT."""
    import importlib

    _claim_socket_path(path)
    for name in preload:
        try:
            if name == "openvino":  # its usage telemetry declined first (ADR 0015)
                from eoforge.inference.no_telemetry import decline_openvino_telemetry

                decline_openvino_telemetry()
            importlib.import_module(name)
        except ImportError:  # an optional runtime not installed here: the run imports less
            if name != "openvino":
                raise
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    bound = path.lstat().st_ino
    listener.listen(16)
    running: dict[int, socket.socket] = {}
    orphans: dict[int, float] = {}  # run pid -> when it was sent SIGTERM, its client gone
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"warm engine ready on {path} (pid {os.getpid()})", flush=True)
    try:
        while not stopping:
            try:
                ready, _, _ = select.select([listener, *running.values()], [], [], 0.2)
            except InterruptedError:
                continue
            for pid, client in list(running.items()):
                if client in ready and _client_gone(pid, client, orphans):
                    del running[pid]
                    client.close()
            _reap_orphans(orphans)
            if listener in ready:
                conn, _ = listener.accept()
                try:
                    request, fds = _receive(conn)
                except (OSError, ValueError):
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _child(request, fds)
                for fd in fds:
                    os.close(fd)
                conn.sendall(f"{pid}\n".encode())
                running[pid] = conn
            while running or orphans:
                done, status = os.waitpid(-1, os.WNOHANG)
                if done == 0:
                    break
                orphans.pop(done, None)
                waiting = running.pop(done, None)
                if waiting is not None:
                    with contextlib.suppress(OSError):
                        waiting.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                    waiting.close()
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if path.lstat().st_ino == bound:  # still the socket this engine made
                path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="start the warm engine")
    s.add_argument("--socket", type=Path, help=f"its Unix socket (default: ${SOCKET_ENV})")
    sub.add_parser("run", help="run this process's flow run in the warm engine (worker command)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "run":
        sys.argv = [sys.argv[0], *rest]
        return run_client()
    path = args.socket or os.environ.get(SOCKET_ENV)
    if not path:
        parser.error(f"give --socket or set {SOCKET_ENV}")
    from eoforge.errors import InputError

    try:
        serve(Path(path))
    except InputError as exc:
        print(f"error (InputError): {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
