"""Where a config named on the command line or by a benchmark lives: a file path, or a recipe packaged with mimkit
(``mae/vit_base_800ep`` is ``mimkit/configs/mae/vit_base_800ep.yaml``)."""

from __future__ import annotations

from pathlib import Path

from mimkit.config_schema import ConfigError

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


RECIPE_COMMANDS = {"finetune": ("finetune", "linprobe", "knn"), "detect": ("detect",), "segment": ("segment",)}
"""The commands that run the packaged recipes of a folder; every other folder holds pretraining recipes."""


def is_url(path: str) -> bool:
    """Whether a data path is a URL (``s3://``, ``gs://``, ``https://``, ...) rather than a local path."""
    return "://" in path


def resolve_config_path(name: str | None, command: str | None = None) -> str | None:
    """A config path as given, or the packaged recipe of that name (with or without ``.yaml``). With ``command``, a
    packaged recipe of another command is refused, naming the command that runs it."""
    if name is None or Path(name).exists():
        return name
    candidate = PACKAGED_CONFIGS / name
    for path in (candidate, candidate.with_suffix(".yaml")):
        if path.is_file():
            _check_command(name, path, command)
            return str(path)
    raise ConfigError(
        f"config '{name}' is neither a file nor a packaged recipe; `mimkit configs` lists the recipes "
        "(e.g. --config mae/vit_base_800ep)"
    )


def packaged_configs() -> list[tuple[str, str]]:
    """``(name, first line of its leading comment)`` of every packaged recipe, sorted by name."""
    recipes = []
    for path in sorted(PACKAGED_CONFIGS.rglob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        summary = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        recipes.append((path.relative_to(PACKAGED_CONFIGS).with_suffix("").as_posix(), summary))
    return recipes


def _check_command(name: str, path: Path, command: str | None) -> None:
    commands = RECIPE_COMMANDS.get(path.parent.name, ("pretrain",))
    if command is not None and command not in commands:
        raise ConfigError(f"'{name}' is a recipe of `mimkit {commands[0]}`: run `mimkit {commands[0]} --config {name}`")
