"""Fetch a hub dataset (core.hubdata.HubDataset) through `datasets`, into the Hugging Face
cache, as plain rows. Used by the worker before an attempt starts, so the rows can be
checked like an upload and handed to the training process as a local file.

The repository's files come through huggingface_hub's cache (HF_HOME / HF_HUB_CACHE; with
HF_HUB_OFFLINE=1 only what is cached there), then `datasets` reads them with its usual
rules (split names from file names, any of its formats).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.hubdata import HubDataset


def load_rows(ds: HubDataset, max_rows: int, cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """At most max_rows + 1 rows of the split (one more than allowed, so the caller can
    refuse an oversized dataset without reading all of it)."""
    import datasets
    from huggingface_hub import constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    local = snapshot_download(ds.repo, repo_type="dataset", revision=ds.revision, cache_dir=cache_dir,
                              local_files_only=offline)
    try:
        split = datasets.load_dataset(local, split=ds.split, streaming=True)
    except ValueError as e:  # an unknown split names the ones there are
        raise ValueError(f"{ds.repo}: {e}") from None
    rows = []
    for row in split:
        rows.append(dict(row))
        if len(rows) > max_rows:
            break
    return rows
