"""Where a config named on the command line or by a benchmark lives."""

from __future__ import annotations

from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name: str | None) -> str | None:
    """A config path as given, or relative to the repository's ``configs/`` folder (``mae/vit_base.yaml``)."""
    if name is None or Path(name).exists():
        return name
    candidate = REPO_CONFIGS / name
    for path in (candidate, candidate.with_suffix(".yaml")):
        if path.exists():
            return str(path)
    return name
