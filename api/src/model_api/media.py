"""Content-Type and Content-Encoding checks shared by the routes."""

from __future__ import annotations

import zlib

from model_api.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaError

# Request bodies may come compressed, as tritonclient sends them with
# request_compression_algorithm (Triton accepts both): zlib's window bits for each.
_INFLATE = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def json_body(content_type: str) -> None:
    kind = media_type(content_type)
    if kind != "application/json" and not kind.endswith("+json"):
        raise UnsupportedMediaError(
            f"Content-Type must be application/json, got {content_type or 'none'!r}"
        )


def decoded(body: bytes, content_encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding (gzip, deflate: the zlib format, or
    identity), at most `limit` bytes decoded: a small body may not become a large one."""
    encoding = content_encoding.strip().lower()
    if encoding == "identity":
        return body
    wbits = _INFLATE.get(encoding)
    if wbits is None:
        raise UnsupportedMediaError(
            f"Content-Encoding {encoding!r} is not supported (gzip, deflate or identity)"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequestError(f"the body is not valid {encoding} data ({exc})") from None
    if len(plain) > limit:
        raise PayloadTooLargeError(
            f"the {encoding} request body decompresses to more than MAX_BODY_BYTES={limit}"
        )
    if not inflater.eof or inflater.unused_data:
        raise BadRequestError(f"the body is not one whole {encoding} stream")
    return plain
