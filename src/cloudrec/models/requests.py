"""Request bodies of the five endpoints and :func:`parse_request`.

``parse_request`` turns a raw body into a validated, normalised model, or raises
``InvalidParameter`` (2101) naming the first offending field as a dotted path
(``mixconfig.input[1].layoutW``). queryrecord has no body: its path parameters are checked by
the API layer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

from cloudrec.errors import InvalidParameter

from ._fields import AppId, HttpUrl, Ident, Model, RoomId, Uid, int_rule, problem
from .mixconfig import MixConfig
from .outputs import Outputs
from .storage import StorageConfig

RecordType = Annotated[int, int_rule(choices=(0, 1, 2))]  # 0 audio+video, 1 video, 2 audio
RecordStreamType = Annotated[int, int_rule(choices=(1, 2))]  # 1 mixed, 2 source

M = TypeVar("M", bound=BaseModel)


def _same_appid(value: int | None, info: ValidationInfo) -> int | None:
    path_appid = (info.context or {}).get("path_appid")
    if value is not None and path_appid is not None and value != path_appid:
        raise problem(f"must equal the appid in the path ({path_appid})")
    return value


def _mixconfig_for_mixed(value: Any, handler: Any, info: ValidationInfo) -> Any:
    """``mixconfig``: required for a mixed recording (streamtype 1), refused for a source
    recording (streamtype 2)."""
    streamtype = info.data.get("streamtype")
    if streamtype == 2 and value is not None:
        raise problem("is not allowed for source recording (streamtype 2)")
    result = handler(value)
    if result is None and streamtype == 1:
        raise problem("is required for mixed recording (streamtype 1)")
    return result


def _empty_is_none(value: Any) -> Any:
    """An empty string counts as no value (``"callbackurl": ""``)."""
    return None if value == "" else value


class ApplyRecordRequest(Model):
    """applyrecord: the seed sends no body; an optional appid/roomid is checked if given."""

    appid: AppId | None = None
    roomid: RoomId | None = None

    _appid_matches = field_validator("appid")(_same_appid)


class StartRecordRequest(Model):
    resid: Ident
    appid: AppId
    roomid: RoomId
    recordtype: RecordType
    streamtype: RecordStreamType
    mixconfig: MixConfig | None = Field(None, validate_default=True)
    uid: Uid | None = Field(None, validate_default=True)
    storagecfg: StorageConfig
    callbackurl: HttpUrl | None = None
    outputs: Outputs | None = None  # beyond the seed

    _appid_matches = field_validator("appid")(_same_appid)

    _mixconfig_for_mixed = field_validator("mixconfig", mode="wrap")(_mixconfig_for_mixed)

    @field_validator("uid")
    @classmethod
    def _uid_for_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("streamtype") == 2:
            raise problem("is required for source recording (streamtype 2)")
        return value

    @field_validator("outputs")
    @classmethod
    def _outputs_fit_the_recording(cls, value: Outputs | None, info: ValidationInfo
                                   ) -> Outputs | None:
        """``pushurl`` needs a mix (there is no encoded stream of our own to push otherwise);
        ``audiocodec`` "opus" needs a source recording (a mix encodes its own AAC);
        ``snapshotinterval`` needs video: recordtype 0/1 and, for a mix, an output with video."""
        if value is None:
            return None
        if value.pushurl is not None and info.data.get("streamtype") == 2:
            raise problem("is only for mixed recording (streamtype 1)", "pushurl")
        if value.audiocodec == "opus" and info.data.get("streamtype") == 1:
            raise problem("opus is only for source recording (streamtype 2)", "audiocodec")
        if value.snapshotinterval is not None:
            mixconfig = info.data.get("mixconfig")
            if info.data.get("recordtype") == 2:
                raise problem("needs video: recordtype 2 records audio only", "snapshotinterval")
            if mixconfig is not None and not mixconfig.output.has_video:
                raise problem("needs video: mixconfig.output.streamtype "
                              f"{mixconfig.output.streamtype} has none", "snapshotinterval")
        return value

    _empty_callback_is_none = field_validator("callbackurl", mode="before")(_empty_is_none)

    @property
    def is_mixed(self) -> bool:
        return self.streamtype == 1


class StopRecordRequest(Model):
    appid: AppId
    resid: Ident
    roomid: RoomId
    recordid: Ident

    _appid_matches = field_validator("appid")(_same_appid)


class QueryRecordRequest(Model):
    """queryrecord's path parameters ``/queryrecord/{roomid}/{recordid}``."""

    roomid: RoomId
    recordid: Ident


class UpdateMixRecordRequest(Model):
    resid: Ident
    appid: AppId
    roomid: RoomId
    recordid: Ident
    mixconfig: MixConfig

    _appid_matches = field_validator("appid")(_same_appid)


# --- parsing -------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_body(data: bytes | bytearray | str | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    if data is None or (isinstance(data, (bytes, bytearray, str)) and not data.strip()):
        return {}  # an empty body is an empty object (applyrecord sends none)
    if not isinstance(data, (bytes, bytearray, str)):
        raise InvalidParameter("body", "must be a JSON object")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidParameter("body", "is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidParameter("body", "must be a JSON object")
    return obj


def _dotted(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


_TYPE_MESSAGES = {
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
}


def _error_to_invalid(err: ErrorDetails) -> InvalidParameter:
    field = _dotted(tuple(err["loc"]))
    if err["type"] == "cloudrec":
        sub = (err.get("ctx") or {}).get("sub")
        if sub:
            field = f"{field}.{sub}" if field else sub
        return InvalidParameter(field or "body", err["msg"])
    if err["type"] == "extra_forbidden":
        return InvalidParameter(
            field, "is not a field of this request (field names are case-sensitive)")
    if err["type"] == "missing":
        message = "is required"
        name, parent = str(err["loc"][-1]), err.get("input")
        if isinstance(parent, dict):
            near = [k for k in parent if isinstance(k, str) and k.lower() == name.lower()]
            if near:
                message += f' (got "{near[0]}"; field names are case-sensitive)'
        return InvalidParameter(field, message)
    return InvalidParameter(field or "body", _TYPE_MESSAGES.get(err["type"], err["msg"]))


def parse_request(
    model_cls: type[M],
    data: bytes | bytearray | str | dict[str, Any] | None,
    path_appid: int | None = None,
) -> M:
    """Validate a request body into ``model_cls``.

    ``data`` is the raw body (bytes or str; empty means ``{}``) or an already decoded object.
    When ``path_appid`` is given, a body ``appid`` must equal it. Raises ``InvalidParameter``
    naming the first offending field; the field is ``"body"`` for invalid JSON or a non-object.
    """
    body = _load_body(data)
    try:
        return model_cls.model_validate(body, context={"path_appid": path_appid})
    except ValidationError as exc:
        raise _error_to_invalid(exc.errors(include_url=False)[0]) from None
