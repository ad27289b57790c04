"""Hub datasets as training data: `hf://datasets/<owner>/<name>[@<revision>][:<split>]`.

Allowed only with TUNEFORGE_ALLOW_HUB_DATASETS. The API checks the reference's form at
create (the rows are unknown until a worker fetches them); the worker fetches the dataset
through `datasets` into the Hugging Face cache (core.training.hubdata), writes its rows as a
JSONL file into the attempt's input/, and checks them with the same rules as an upload
(`check_rows`) before anything trains on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

PREFIX = "hf://datasets/"
# A branch, tag or commit: git ref-name characters, never a full `refs/...` path (the hub
# serves anyone's pull request as refs/pr/N). The model's `revision` follows the same rule.
REVISION = re.compile(r"^(?!refs/)(?![-/.])(?!.*\.\.)(?!.*//)[A-Za-z0-9._/-]{1,128}(?<![/.])\Z")
_REF = re.compile(
    r"^hf://datasets/(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})"
    r"(?:@(?P<revision>[^:]+))?(?::(?P<split>[A-Za-z0-9_.-]{1,64}))?\Z"
)


@dataclass(frozen=True)
class HubDataset:
    repo: str
    revision: str | None
    split: str


def is_hub_ref(ref: str) -> bool:
    return ref.startswith("hf://")


def parse_hub_ref(ref: str) -> HubDataset:
    """The parts of a reference, or ValueError saying what a valid one looks like."""
    m = _REF.match(ref)
    if not m or ".." in m["repo"] or (m["revision"] is not None and not REVISION.match(m["revision"])):
        raise ValueError(
            f"{ref[:300]!r} is not a hub dataset reference; expected "
            "hf://datasets/<owner>/<name>[@<branch, tag or commit>][:<split>]"
        )
    return HubDataset(m["repo"], m["revision"], m["split"] or "train")


def check_rows(rows: list[dict[str, Any]], max_rows: int) -> None:
    """The row rules an upload is held to, for rows that came another way (a hub dataset)."""
    from core.datafiles import DataFileError, check_chat_row, detect_format

    if len(rows) > max_rows:
        raise DataFileError(f"the dataset has more than {max_rows} rows, this server's limit")
    if detect_format(rows) == "messages":
        for index, row in enumerate(rows):
            check_chat_row(row, index)
