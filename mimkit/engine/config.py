"""The pretraining configuration: YAML sections validated into typed dataclasses.

Every field has a default, and the defaults are the Quick start job (a tiny MAE on the sample photos, a
few CPU minutes). The paper recipes (``mimkit configs``) set their own values; ``docs/configs.md`` explains
each field. Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mimkit.config_paths import is_url
from mimkit.config_schema import ConfigError, Settings, apply_overrides, from_dict, load_yaml
from mimkit.config_types import Count, NonNegativeInt
from mimkit.engine.config_parts import (
    CLIP_SOURCES,
    AccumulationFields,
    ImageColumnFields,
    ImageDataFields,
    LoopFields,
    OptimFields,
    check_python_source,
    resolve_warmup,
)
from mimkit.model_configs.registry import model_config


@dataclass
class ModelSection(Settings):
    name: str = "mae_vit_tiny_patch16"
    """A name from ``mimkit.list_models()``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Overrides of that model's configuration fields (e.g. ``mask_ratio: 0.75``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        model_config(self.name, prefix="model.args", **self.args)  # a wrong name or field fails here, naming it


@dataclass
class DataSection(ImageColumnFields, ImageDataFields):
    source: Literal[
        "samples", "folder", "fashion_mnist", "filelist", "hf_datasets", "shards", "sample_clips", "clips", "python"
    ] = "samples"
    """``samples``: scikit-image's photos; ``folder``: any folder of images; ``filelist``: a CSV (a ``path``
    column) or text file (a path per line) listing images; ``hf_datasets``: a local Hugging Face dataset
    (``save_to_disk`` folder or ``imagefolder`` directory); ``fashion_mnist``: its idx files; ``shards``: images
    written by ``mimkit shards`` (local or in object storage); ``sample_clips``: clips panned and zoomed over the
    photos; ``clips``: a folder of clips (frame folders or video files). The clip sources need a video model.
    ``python``: a dataset passed to :func:`mimkit.pretrain` (set by it, with ``python_length``)."""
    path: str | None = None
    """The image folder (``folder``), the list file (``filelist``; relative paths in it are read from its folder),
    the dataset folder (``hf_datasets``), the idx folder (``fashion_mnist``, default the Debian location), the shards
    (``shards``: a local folder or a URL such as ``s3://bucket/shards``) or the clip folder (``clips``)."""
    split: str = "train"
    """``hf_datasets``: the split to read (of a dataset with several, such as an ``imagefolder`` with train/ and
    validation/ folders)."""
    python_length: Count | None = None
    """``python``: the number of items of the dataset passed in Python, recorded by :func:`mimkit.pretrain` so a
    resume with another dataset is refused."""
    cache: str | None = None
    """``shards`` from a URL: the local folder the shards are downloaded to (required then; unused otherwise)."""
    canonical_nodes: Count = 1
    """``shards``: streaming's number of canonical nodes. The sample order depends on it and not on the number of
    machines, processes or workers: keep it fixed for a run and its resumes; the number of machines should divide it
    or be a multiple of it (streaming fetches each machine's part of the shards only)."""
    hflip: bool = True
    """Random horizontal flips (off for motion-direction data such as SSV2)."""
    samples_per_epoch: Count | None = None
    """Random crops per epoch; default: the number of images (512 for the 18 sample photos)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_python_source(self.source, {"python_length": self.python_length})
        if self.source != "shards":
            return
        if not self.path:
            raise ValueError("data.source 'shards' needs data.path: the folder or URL that mimkit shards wrote")
        if is_url(self.path) and not self.cache:
            raise ValueError(f"data.path {self.path} is remote; set data.cache to a local folder to download it to")


@dataclass
class TrainSection(LoopFields, AccumulationFields):
    compile: bool = False
    """Run the model's forward (and so its backward) through ``torch.compile``. It pays on GPUs; on a 2-core CPU
    it did not pay for a small MAE (0.92x after 80 s of compilation, ``shared/bench/official_cpu.md``), so check
    with ``mimkit bench --compile`` before using it there."""
    visualize_images: NonNegativeInt = 4
    """Images in the end-of-epoch reconstruction grid (0: none)."""


@dataclass
class PretrainConfig(Settings):
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimFields = field(default_factory=OptimFields)
    train: TrainSection = field(default_factory=TrainSection)
    output: str = "runs/pretrain"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source_fits_model(self.data.source, self.model.name)
        self.optim.warmup_epochs = resolve_warmup(self.optim.warmup_epochs, self.train.epochs)
        try:
            model_config(self.model.name, prefix="model.args", **self.model_args())
        except ConfigError as err:
            raise ConfigError(f"{err} (img_size and in_chans come from data.img_size and data.in_chans)") from err

    def model_args(self) -> dict[str, Any]:
        """``model.args`` with what the data section decides filled in: ``in_chans``, ``img_size``, a video model's
        ``num_frames``, and MR-MAE's ``input_mean``/``input_std`` (the data's normalization, which its teacher
        undoes). An explicit model value that disagrees with the data is refused."""
        data = self.data
        args = dict(self.model.args)
        base = model_config(self.model.name)
        decided = {"in_chans": data.in_chans, "img_size": data.img_size}
        if hasattr(base, "num_frames"):
            decided["num_frames"] = data.num_frames
        if hasattr(base, "input_mean"):
            decided.update(input_mean=list(data.mean), input_std=list(data.std))
        for name, value in decided.items():
            given = args.setdefault(name, value)
            if name != "img_size" and (list(given) if isinstance(given, (list, tuple)) else given) != value:
                data_name = {"input_mean": "mean", "input_std": "std"}.get(name, name)
                raise ValueError(f"model.args.{name}={given} disagrees with data.{data_name}={value}")
        return args


def check_source_fits_model(source: str, model_name: str) -> None:
    """A clip source needs a video model (one with ``num_frames``) and an image source an image model."""
    video_model = hasattr(model_config(model_name), "num_frames")
    if video_model != (source in CLIP_SOURCES):
        takes, gives = ("clips", "images") if video_model else ("images", "clips")
        choices = ", ".join(CLIP_SOURCES) if video_model else "an image source"
        raise ValueError(
            f"data.source '{source}' gives {gives} but model '{model_name}' takes {takes}; choose data.source from "
            f"{choices}"
        )


def load_pretrain_config(path: str | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a YAML config (or start from the defaults), apply ``key=value`` overrides, validate."""
    data = load_yaml(path) if path else {}
    return from_dict(PretrainConfig, apply_overrides(data, overrides or []))
