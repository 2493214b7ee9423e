"""FFCV: write any dataset to `.beton` files and read them back through FFCV Loader pipelines.

    from visionlaunch.ffcv_builders import write_imageset, FfcvLoader
    write_imageset(train_set, "train.beton", split="train")           # validated, atomic, with a manifest
    loader = FfcvLoader("train.beton", 128, train=True, seed=0, device=torch.device("cpu"), augment=cfg.augment)

FFCV is an optional extra (`pip install visionlaunch[ffcv]` plus a Debian package line, see `INSTALL_HINT`):
this package imports it only when a beton is written or read, so everything else works without it.
"""

from visionlaunch.ffcv_builders.manifest import BetonManifest, check_beton, source_digest
from visionlaunch.ffcv_builders.requirements import INSTALL_HINT, require_ffcv
from visionlaunch.ffcv_builders.validate import validate_samples

__all__ = ["INSTALL_HINT", "BetonManifest", "FfcvLoader", "check_beton", "require_ffcv", "source_digest",
           "validate_samples", "write_beton", "write_imageset"]


def __getattr__(name):  # the parts that need ffcv load on first use
    if name in ("write_beton", "write_imageset"):
        from visionlaunch.ffcv_builders import writer
        return getattr(writer, name)
    if name == "FfcvLoader":
        from visionlaunch.ffcv_builders.loader import FfcvLoader
        return FfcvLoader
    raise AttributeError(name)
