"""Model math: the frozen MLLM adapter, the AIM projector and its checkpoint format, training.

Nothing here knows about HTTP or Redis. Importing the package is cheap: models load only when asked.
"""

from projector.backbone import Backbone, BackboneError, DemonstrationEncoding, QueryEmbedding, load_backbone
from projector.encoder import AimEncoder, FusedDemonstration
from projector.images import ImageError, decode_image
from projector.projector import Projector, ProjectorConfig, ProjectorMismatchError

__all__ = [
    "AimEncoder",
    "Backbone",
    "BackboneError",
    "DemonstrationEncoding",
    "FusedDemonstration",
    "ImageError",
    "Projector",
    "ProjectorConfig",
    "ProjectorMismatchError",
    "QueryEmbedding",
    "decode_image",
    "load_backbone",
]
