"""DVC push/pull and boto3 artifacts against a real S3-compatible server (moto_server) on loopback."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmmops.storage import s3
from lmmops.storage.dvc import configure_s3_remote, dvc_add, run_dvc

from testutil import git

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto_server did not start within 60 s")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def aws_env(monkeypatch, s3_endpoint):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("LMMOPS_S3_ENDPOINT", s3_endpoint)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return s3_endpoint


def _md5s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _init_repo(path: Path) -> None:
    path.mkdir(parents=True)
    git(path, "init", "-q")
    run_dvc(path, "init", "-q")
    run_dvc(path, "config", "core.analytics", "false")


def test_dvc_push_pull_round_trip(tmp_path: Path, aws_env: str):
    client = s3.client()
    s3.ensure_bucket(client, "lmmops-test")

    origin = tmp_path / "origin"
    _init_repo(origin)
    data = origin / "data"
    (data / "vqa" / "train").mkdir(parents=True)
    (data / "vqa" / "train" / "COCO_train2014_000000000001.png").write_bytes(os.urandom(2048))
    (data / "deepscaler").mkdir()
    (data / "deepscaler" / "train.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n')
    dvc_add(origin, "data")
    configure_s3_remote(origin, bucket="lmmops-test", prefix="dvc", endpoint_url=aws_env, default=True)
    git(origin, "add", "-A")
    git(origin, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "data")
    run_dvc(origin, "push", "-q")
    assert any(k.startswith("dvc/") for k in s3.list_keys(client, "lmmops-test"))

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    assert not (clone / "data").exists()
    # .dvc/config.local (endpoint) is not committed: a fresh checkout configures it from its env
    configure_s3_remote(clone, bucket="lmmops-test", prefix="dvc", endpoint_url=aws_env, default=True)
    run_dvc(clone, "pull", "-q")
    assert _md5s(clone / "data") == _md5s(data)
    assert (clone / "data.dvc").read_text() == (origin / "data.dvc").read_text()


def test_boto3_artifacts_upload_download(tmp_path: Path, aws_env: str):
    client = s3.client()
    s3.ensure_bucket(client, "lmmops-artifacts")
    src = tmp_path / "vectors.safetensors"
    src.write_bytes(os.urandom(4096))
    s3.upload_file(client, src, "lmmops-artifacts", "runs/1/vectors.safetensors")
    assert s3.list_keys(client, "lmmops-artifacts") == ["runs/1/vectors.safetensors"]  # no temp key left
    dst = tmp_path / "out" / "vectors.safetensors"
    s3.download_file(client, "lmmops-artifacts", "runs/1/vectors.safetensors", dst)
    assert dst.read_bytes() == src.read_bytes()
    assert not list(dst.parent.glob(".*part*"))
    shutil.rmtree(dst.parent)
