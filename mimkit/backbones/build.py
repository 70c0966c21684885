"""Building an encoder from a method's config: every constructor argument the config has a field for."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from torch import nn

EncoderT = TypeVar("EncoderT", bound=nn.Module)


def encoder_from_config(encoder_class: type[EncoderT], config: Any) -> EncoderT:
    """``encoder_class(**fields)`` with the config fields named like the constructor's parameters (``embed_dim``,
    ``depth``, ``img_size`` ...); parameters the config lacks keep their defaults."""
    parameters = inspect.signature(encoder_class).parameters
    return encoder_class(**{name: getattr(config, name) for name in parameters if hasattr(config, name)})
