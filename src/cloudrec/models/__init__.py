"""Request models of the recordoss API: the seed's ranges, rules and normalisation.

Use :func:`parse_request` on a raw body; it returns a validated model or raises
``cloudrec.errors.InvalidParameter`` (2101) naming the first offending field.
"""

from .mixconfig import (
    Background,
    BackgroundImage,
    ImageWatermark,
    MixConfig,
    MixInput,
    MixOutput,
    TextWatermark,
    TimestampWatermark,
    Watermark,
)
from .requests import (
    ApplyRecordRequest,
    QueryRecordRequest,
    StartRecordRequest,
    StopRecordRequest,
    UpdateMixRecordRequest,
    parse_request,
)
from .storage import StorageConfig

__all__ = [
    "ApplyRecordRequest",
    "Background",
    "BackgroundImage",
    "ImageWatermark",
    "MixConfig",
    "MixInput",
    "MixOutput",
    "QueryRecordRequest",
    "StartRecordRequest",
    "StopRecordRequest",
    "StorageConfig",
    "TextWatermark",
    "TimestampWatermark",
    "UpdateMixRecordRequest",
    "Watermark",
    "parse_request",
]
