"""``save_pretrained``, ``from_pretrained`` and ``push_to_hub`` for every mimkit pretraining model, through
``huggingface_hub``'s :class:`~huggingface_hub.ModelHubMixin` (whose ``push_to_hub`` uploads what
``save_pretrained`` writes).

The folder is :mod:`mimkit.hub_folder`'s layout with the :mod:`mimkit.model_card` README. mimkit writes and reads the
files itself rather than through ``PyTorchModelHubMixin``, whose loader is lenient by default (missing weights keep
their random init), accepts pickles and ignores unknown config fields: here loading is strict unless asked otherwise
and every file is checked. ``save_pretrained`` writes only into a new or empty folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelHubMixin, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError

from mimkit.config_schema import to_dict
from mimkit.errors import MimkitError
from mimkit.hub_folder import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, hub_config, write_weights_and_config
from mimkit.model_card import model_card_text
from mimkit.model_configs.registry import list_models, model_class, model_config
from mimkit.output_guard import check_new_folder
from mimkit.pretrained import build_pretraining_model, read_stored


def closest_registered_name(model: Any) -> str:
    """The registered name whose configuration differs least from ``model.config`` among those that build
    ``model``'s class (its own name when it was built from one)."""
    if getattr(model, "model_name", None) is not None:
        return model.model_name
    config = to_dict(model.config)
    candidates = []
    for name in list_models():
        if model_class(name) is type(model) and type(model_config(name)) is type(model.config):
            registered = to_dict(model_config(name))
            candidates.append((sum(registered[key] != value for key, value in config.items()), name))
    if not candidates:
        raise MimkitError(f"no registered model builds a {type(model).__name__}; register one (register_model) first")
    return min(candidates)[1]


def _local_copy(model_id: str, **download: Any) -> Path:
    """``model_id`` itself when it is a local file or folder, else the Hub repository's model files, downloaded (or
    taken from the cache)."""
    if Path(model_id).exists():
        return Path(model_id)
    try:
        files = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]
        return Path(snapshot_download(repo_id=model_id, allow_patterns=files, **download))
    except HFValidationError as err:
        raise FileNotFoundError(f"{model_id}: no such file or folder (nor a Hub repository id)") from err
    except (HfHubHTTPError, OSError) as err:
        reason = str(err).splitlines()[0]
        message = f"{model_id} is no local folder, and its Hub repository could not be fetched: {reason}"
        raise MimkitError(message) from err


class HubMixin(ModelHubMixin):
    """The Hub layout for a pretraining model (``self.config``: its configuration dataclass); the model card is
    :mod:`mimkit.model_card`'s."""

    model_name: str | None = None
    """The registered name the model was built from (set by :func:`mimkit.create_model` and the loaders)."""
    training_run: dict[str, Any] | None = None
    """The record of the mimkit run that trained the loaded weights (config, step, epoch), for the model card."""

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        config: dict | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Write ``config.json``, ``model.safetensors`` and the ``README.md`` model card into ``save_directory`` (a
        new or empty folder); with ``push_to_hub=True`` also upload them to ``repo_id``. ``config.json`` is always
        the model's own: ``config`` must be left out."""
        if config is not None:
            raise MimkitError("save_pretrained writes config.json from the model itself; leave config out")
        check_new_folder(save_directory, "save_directory")
        return super().save_pretrained(
            save_directory,
            repo_id=repo_id,
            push_to_hub=push_to_hub,
            model_card_kwargs=model_card_kwargs,
            **push_to_hub_kwargs,
        )

    def _save_pretrained(self, save_directory: Path) -> None:
        config = hub_config(closest_registered_name(self), to_dict(self.config), self.training_run)
        write_weights_and_config(save_directory, self.state_dict(), config)

    def generate_model_card(self, *args: Any, repo_id: str | None = None, **kwargs: Any) -> ModelCard:
        parameters = sum(p.numel() for p in self.parameters() if p.requires_grad)
        name = closest_registered_name(self)
        return ModelCard(model_card_text(name, to_dict(self.config), self.training_run, parameters, repo_id))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        strict: bool = True,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
        **overrides: Any,
    ) -> Any:
        """The model saved in a folder by :meth:`save_pretrained`, or in a Hub repository (downloaded through the
        cache), in eval mode. Also reads a mimkit pretraining checkpoint file. ``overrides`` change configuration
        fields that do not shape the weights (e.g. ``mask_ratio``); ``strict=False`` loads what fits and reports the
        rest (``model.load_report``)."""
        download = dict(
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
        )
        stored = read_stored(_local_copy(str(pretrained_model_name_or_path), **download))
        if stored.kind != "pretraining":
            raise MimkitError(
                f"{stored.source} holds a {stored.kind} model, not a pretraining one; mimkit.load_checkpoint loads it"
            )
        built = model_class(stored.name)
        if not issubclass(built, cls):
            raise MimkitError(
                f"{stored.source} holds a {built.__name__} ('{stored.name}'), not a {cls.__name__}; load it with "
                "mimkit.from_pretrained"
            )
        return build_pretraining_model(stored.name, stored, strict, **overrides).eval()
