"""Storage: DVC (the versioned data tree and its remotes) and S3 through boto3 for non-DVC artifacts.

- `lmmops.storage.dvc`: `dvc add` of data/, restoring data/ on a fresh clone, remote configuration
  (a local remote inside the repo's ignored area by default; S3 from the environment).
- `lmmops.storage.s3`: a boto3 client built from the standard AWS variables plus
  `LMMOPS_S3_ENDPOINT` (for MinIO or any S3-compatible server), and upload/download helpers.
"""
