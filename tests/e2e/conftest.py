"""A real MLflow tracking server for the end-to-end tests: `mlflow/server.sh` (SQLite backend,
local artifacts, 127.0.0.1) on a free port, shared by the tests of a session."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import REPO


@dataclasses.dataclass
class MlflowServer:
    uri: str
    directory: pathlib.Path
    process: subprocess.Popen

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the script execs mlflow; uvicorn below
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(15)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server_at(directory: pathlib.Path, timeout: float = 180):
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    with open(directory / "server.log", "w") as log:
        process = subprocess.Popen(["bash", str(REPO / "mlflow" / "server.sh"), str(port),
                                    str(directory)], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", directory, process)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(server.uri + "/health", timeout=2).read()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if process.poll() is not None or time.time() > deadline:
                    pytest.fail("mlflow server did not start:\n"
                                + (directory / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        assert f"MLflow tracking server: {server.uri}" in (directory / "server.log").read_text()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One tracking server for the session's e2e tests (each test uses its own experiment)."""
    with mlflow_server_at(tmp_path_factory.mktemp("mlflow_server")) as server:
        yield server
