"""Team mode: an MLflow tracking server on a PostgreSQL backend store, on this machine.

``churnlab server start`` (``make server``) creates a PostgreSQL cluster under
``.churnlab/server/`` on first use (Debian's PostgreSQL server binaries), with a database
user whose random password lives only in ``.churnlab/server/pgpass`` (mode 600, git-ignored,
handed to clients through ``PGPASSFILE``, never on a command line or in a URI). It then
starts ``mlflow server`` on that database, serving artifacts from
``.churnlab/server/artifacts``, bound to 127.0.0.1. The pipeline logs to it when
``MLFLOW_TRACKING_URI=http://127.0.0.1:5000``.

For a shared deployment see docs/tracking.md: allowed hosts, authentication, the admin password.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from churnlab.errors import ChurnlabError

SERVER_DIR = ".churnlab/server"
DB_USER = "churnlab"
DB_NAME = "mlflow"


def postgres_bin() -> Path:
    """The folder of the PostgreSQL server binaries (``CHURNLAB_PG_BIN`` or the newest).

    Raises:
        ChurnlabError: PostgreSQL's server is not installed.
    """
    if os.environ.get("CHURNLAB_PG_BIN"):
        return Path(os.environ["CHURNLAB_PG_BIN"])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if not found:
        raise ChurnlabError(
            "PostgreSQL's server is not installed: `apt-get install postgresql` (Debian), "
            "or set CHURNLAB_PG_BIN to the folder holding initdb and pg_ctl"
        )
    return found[-1].parent


def _as_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ChurnlabError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")


def _give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def pgpass_env(folder: Path) -> dict[str, str]:
    """The environment for a client of the database: the password comes from the file."""
    return {**os.environ, "PGPASSFILE": str(folder / "pgpass")}


def start_postgres(folder: Path, port: int) -> str:
    """Start (creating on first use) the cluster in ``folder``; return its URI (no password).

    Raises:
        ChurnlabError: a PostgreSQL tool failed (its message is included).
    """
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the postgres user must reach its data folder
    bin_dir = postgres_bin()
    data = folder / "pgdata"
    run_dir = folder / "postgres-run"  # socket and log, written by the postgres user
    log = run_dir / "postgres.log"
    fresh = not (data / "PG_VERSION").is_file()
    for path in (data, run_dir):
        path.mkdir(exist_ok=True)
        path.chmod(0o700 if path == data else 0o755)
        _give_to_postgres(path)
    if fresh:
        password = secrets.token_urlsafe(24)
        pwfile = run_dir / "initial-password"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        _give_to_postgres(pwfile)
        try:
            _run(
                _as_owner(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(data),
                        "-U",
                        DB_USER,
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "-E",
                        "UTF8",
                        "--no-sync",
                    ]
                ),
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        pgpass = folder / "pgpass"
        pgpass.write_text(f"127.0.0.1:{port}:*:{DB_USER}:{password}\n")
        pgpass.chmod(0o600)
    else:  # the port may differ from last time: the password file follows
        pgpass = folder / "pgpass"
        fields = pgpass.read_text().strip().split(":")
        pgpass.write_text(":".join([fields[0], str(port), *fields[2:]]) + "\n")
    _run(
        _as_owner(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-o",
                f"-p {port} -k {run_dir} -c listen_addresses=127.0.0.1",
                "start",
            ]
        ),
        f"starting PostgreSQL (log: {log})",
    )
    if fresh:
        _run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, DB_NAME],
            "createdb",
            env=pgpass_env(folder),
        )
    return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{port}/{DB_NAME}"


def stop_postgres(folder: Path) -> None:
    data = folder.resolve() / "pgdata"
    if (data / "postmaster.pid").is_file():
        _run(
            _as_owner(
                [str(postgres_bin() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
            ),
            "stopping PostgreSQL",
        )


def wait_until_up(url: str, seconds: float, process: subprocess.Popen | None = None) -> None:
    """Wait for ``url/health`` to answer.

    Raises:
        ChurnlabError: the server did not come up (or its process ended) in time.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ChurnlabError(f"the MLflow server at {url} exited ({process.returncode})")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise ChurnlabError(f"the MLflow server at {url} did not answer within {seconds:.0f} s")


def start_tracking_server(
    folder: Path, backend_uri: str, port: int, host: str = "127.0.0.1"
) -> subprocess.Popen:
    """Start ``mlflow server`` on the backend store; returns once it answers."""
    folder = folder.resolve()
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log = open(folder / "mlflow.log", "ab")  # noqa: SIM115 (the server keeps it open)
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(artifacts),
            "--serve-artifacts",
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**pgpass_env(folder), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"},
        start_new_session=True,
    )
    (folder / "mlflow.pid").write_text(f"{process.pid}\n")
    url = f"http://{host}:{port}"
    try:
        wait_until_up(url, 120, process)
    except ChurnlabError:
        stop_tracking_server(folder)
        raise ChurnlabError(
            f"the MLflow server did not start; its log: {folder / 'mlflow.log'}"
        ) from None
    return process


def stop_tracking_server(folder: Path, grace: float = 10) -> None:
    """Stop the server: SIGTERM, then SIGKILL after ``grace`` seconds."""
    pid_file = folder.resolve() / "mlflow.pid"
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(int(grace * 10)):
            with contextlib.suppress(ChildProcessError):  # our own child: reap it
                os.waitpid(pid, os.WNOHANG)
            os.kill(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)


def start(root: Path, db_port: int = 5433, port: int = 5000) -> str:
    """Start the team server of the project (database, then MLflow); return its URL."""
    folder = root / SERVER_DIR
    backend = start_postgres(folder, db_port)
    start_tracking_server(folder, backend, port)
    return f"http://127.0.0.1:{port}"


def stop(root: Path) -> None:
    folder = root / SERVER_DIR
    stop_tracking_server(folder)
    stop_postgres(folder)
