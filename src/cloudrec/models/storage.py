"""Where recordings go: ``storagecfg``.

``vender`` 0 Alibaba OSS, 1 Tencent COS, 2 Qiniu Kodo (seed); beyond the seed 100 any
S3-compatible store and 101 a local directory, for which endpoint/accesskey/secretkey are still
required (the seed's rule) but unused.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

from ._fields import Model, int_rule, problem, text_rule

VENDERS = (0, 1, 2, 100, 101)
MAX_PREFIX_CHARS = 128

# S3 bucket naming: 3..63 of [a-z0-9.-], starting and ending with a letter or digit, no "..".
_BUCKET = re.compile(r"(?!.*\.\.)[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_PREFIX_ITEM = re.compile(r"[A-Za-z0-9]+")

Vender = Annotated[int, int_rule(choices=VENDERS)]
Bucket = Annotated[
    str,
    text_rule(
        pattern=_BUCKET,
        pattern_desc="must be a bucket name of 3 to 63 characters of a-z 0-9 . - "
        "starting and ending with a letter or digit",
    ),
]
PrefixItem = Annotated[
    str, text_rule(pattern=_PREFIX_ITEM, pattern_desc="may contain only A-Z a-z 0-9")
]
Secret = Annotated[str, text_rule(max_chars=256)]


class StorageConfig(Model):
    vender: Vender
    endpoint: Annotated[str, text_rule(max_bytes=256)]
    bucket: Bucket
    accesskey: Secret
    secretkey: Secret = Field(repr=False)  # kept out of logs
    fileprefix: list[PrefixItem] | None = None

    @field_validator("fileprefix")
    @classmethod
    def _prefix_length(cls, items: list[str] | None) -> list[str] | None:
        if items and len("/".join(items)) + 1 > MAX_PREFIX_CHARS:
            raise problem(
                f"the prefix with slashes must be at most {MAX_PREFIX_CHARS} characters"
            )
        return items

    @property
    def prefix(self) -> str:
        """The object-name prefix: ``"a/b/"`` for ``["a", "b"]``, ``""`` for none."""
        return "/".join(self.fileprefix) + "/" if self.fileprefix else ""
