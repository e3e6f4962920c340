"""Process environment for lmmops entry points: telemetry off, caches inside the repo, offline hubs.

Called once by each entry point (the `lmmops` command line, flows/, the test suite) before the heavy
libraries are imported. Values already set by the user win (setdefault), so a lab can point caches
elsewhere. Library code does not read these; they steer the third-party libraries:

- telemetry: MLflow (`DO_NOT_TRACK` must be exactly "true"), DVC, Prefect, Great Expectations, HF;
- nothing under $HOME or /var/tmp: SQLite temp files go to the system temp dir (SQLITE_TMPDIR);
  Prefect's home, HF/torch-extension/matplotlib caches go to
  `<repo>/.prefect` and `<repo>/.cache` (both git-ignored);
- offline: `HF_HUB_OFFLINE=1`, nothing is downloaded at run time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def find_root(start: Path | None = None) -> Path:
    """The project root: the nearest directory upwards holding params.yaml or dvc.yaml (else cwd)."""
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").is_file() or (d / "dvc.yaml").is_file():
            return d
    return here


def configure_environment(root: Path) -> None:
    root = Path(root).resolve()
    cache = root / ".cache"
    defaults = {
        # telemetry off
        "DO_NOT_TRACK": "true",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "DVC_NO_ANALYTICS": "1",
        "DVC_IGNORE_UPDATER": "1",
        "DVC_SITE_CACHE_DIR": str(cache / "dvc-site"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        # nothing in $HOME or /var/tmp
        "PREFECT_HOME": str(root / ".prefect"),
        "HF_HOME": str(cache / "huggingface"),
        "TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "XDG_CACHE_HOME": str(cache),
        # SQLite (Prefect's, MLflow's and DVC's stores) puts its temp files in /var/tmp unless told otherwise
        "SQLITE_TMPDIR": tempfile.gettempdir(),
        # offline
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # a cold 2-core machine needs more than Prefect's default 20 s to start its local server
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
