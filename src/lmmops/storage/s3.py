"""S3 through boto3, for artifacts that DVC does not version (exports, reports, large caches).

The client is built from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION) plus an explicit endpoint, so MinIO or any S3-compatible server works. Uploads go
to a temporary key first and are copied into place, so a reader never sees half an object under the
final key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def client(endpoint_url: str | None = None) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or os.environ.get("LMMOPS_S3_ENDPOINT") or None,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


def ensure_bucket(s3: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)


def upload_file(s3: Any, path: Path, bucket: str, key: str) -> None:
    tmp_key = f"{key}.uploading-{os.getpid()}"
    s3.upload_file(str(path), bucket, tmp_key)
    s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": tmp_key})
    s3.delete_object(Bucket=bucket, Key=tmp_key)


def download_file(s3: Any, bucket: str, key: str, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    s3.download_file(bucket, key, str(tmp))
    tmp.replace(path)


def list_keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys
