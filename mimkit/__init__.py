"""mimkit: masked-image-modeling pretraining of vision backbones."""

from mimkit import export as _register_timm_models  # noqa: F401  (puts mimkit_* encoders in timm's registry)
from mimkit.models import create_model, list_models, model_config

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "model_config"]
