"""DVC glue: version data/ with data.dvc, restore it, and configure remotes.

`data.dvc` (top level) tracks `data/`, the dataset tree: real public-format files a user dropped in,
or the synthetic ones that `lmmops generate` writes. Because a DVC-tracked path cannot also be the
output of a dvc.yaml stage, `generate` writes data/ and then runs `dvc add data` itself; downstream
stages do not list `data` as a dep (data.dvc in the graph breaks `dvc repro` on a fresh clone): `validate`
runs on every repro, fails unless `data_differs` finds nothing, and records data.dvc's md5 in its report,
which the downstream stages depend on.

On a fresh clone data.dvc names a version whose files are in no local cache yet: `ensure_data`
restores them from the DVC cache, then the default remote, and only then regenerates them (the
generators are deterministic, so the regenerated tree has the committed md5 where library versions
match; if not, data.dvc changes and git shows it).

Remotes: `local` (default) at `.dvcstore/` inside the repo, git-ignored; `s3` configured by
`configure_s3_remote` from LMMOPS_S3_ENDPOINT / LMMOPS_S3_BUCKET and the AWS credential variables,
written to `.dvc/config.local` so that no endpoint or secret is committed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


class DvcError(RuntimeError):
    pass


def dvc_executable() -> str:
    """The `dvc` next to this interpreter (the project venv), else the one on PATH."""
    candidate = Path(sys.executable).with_name("dvc")
    return str(candidate) if candidate.exists() else (shutil.which("dvc") or "dvc")


def run_dvc(root: Path, *args: str, check: bool = True, quiet: bool = False,
            capture: bool = True) -> subprocess.CompletedProcess:
    """Run the dvc command line in `root`; `capture=False` lets its progress reach the terminal."""
    cmd = [dvc_executable(), *args]
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=root, capture_output=capture, text=True, env=os.environ.copy())
    if check and proc.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed in {root} (exit {proc.returncode}):\n"
                       f"{proc.stdout}{proc.stderr}")
    if capture and not quiet and proc.stdout.strip():
        log.info(proc.stdout.strip())
    return proc


def dvc_add(root: Path, path: str = "data") -> None:
    """`dvc add <path>`: record the tree's md5 in <path>.dvc and store its files in the DVC cache."""
    run_dvc(root, "add", "--quiet", path)


def data_differs(root: Path, path: str = "data") -> str | None:
    """How `path` on disk differs from the version `<path>.dvc` records (e.g. "data: modified"); None if it
    matches. `dvc status` hashes through DVC's state database, so an unchanged tree costs about a second."""
    proc = run_dvc(root, "status", "--json", f"{path}.dvc", quiet=True)
    try:
        status = json.loads(proc.stdout or "{}")
    except ValueError as exc:
        raise DvcError(f"`dvc status --json {path}.dvc` in {root} printed no JSON: {proc.stdout!r}") from exc
    changes = [f"{out}: {what}" for entry in status.get(f"{path}.dvc", []) if isinstance(entry, dict)
               for out, what in entry.get("changed outs", {}).items()]
    return ", ".join(changes) or None


def ensure_data(root: Path, path: str = "data") -> str:
    """Make sure `path` exists locally; returns a one-line account of what was done."""
    root = Path(root)
    target = root / path
    if target.is_dir() and any(target.iterdir()):
        return f"{path}/ present"
    dvc_file = root / f"{path}.dvc"
    if dvc_file.is_file():
        if run_dvc(root, "checkout", "--quiet", str(dvc_file.name), check=False, quiet=True).returncode == 0:
            return f"{path}/ restored from the DVC cache"
        if run_dvc(root, "pull", "--quiet", str(dvc_file.name), check=False, quiet=True).returncode == 0:
            return f"{path}/ pulled from the DVC remote"
    # Through DVC, so that dvc.lock records the run and the following `dvc repro` does not redo it.
    if run_dvc(root, "repro", "--single-item", "--force", "generate", check=False, capture=False).returncode:
        raise DvcError(f"{path}/ is missing and `dvc repro generate` failed (output above)")
    return f"{path}/ was in no DVC cache or remote: generated it (dvc repro generate)"


def configure_s3_remote(root: Path, *, name: str = "s3", bucket: str, prefix: str = "dvc",
                        endpoint_url: str | None = None, default: bool = False) -> None:
    """Add (or update) an S3 remote in .dvc/config.local; credentials stay in the AWS variables."""
    run_dvc(root, "remote", "add", "--local", "--force", *(["--default"] if default else []),
            name, f"s3://{bucket}/{prefix}", quiet=True)
    if endpoint_url:
        run_dvc(root, "remote", "modify", "--local", name, "endpointurl", endpoint_url, quiet=True)


def configure_s3_remote_from_env(root: Path, *, default: bool = False) -> bool:
    """Configure the `s3` remote from LMMOPS_S3_ENDPOINT / LMMOPS_S3_BUCKET; False when unset."""
    bucket = os.environ.get("LMMOPS_S3_BUCKET")
    if not bucket:
        return False
    configure_s3_remote(root, bucket=bucket, prefix=os.environ.get("LMMOPS_S3_PREFIX", "dvc"),
                        endpoint_url=os.environ.get("LMMOPS_S3_ENDPOINT"), default=default)
    return True
