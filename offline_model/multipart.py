"""Reading a multipart/form-data body (the images edit request).

Split on the boundary by hand: the standard library's email parser takes
about a second for a 3 MB image, which would put the fake's own parsing into
every benchmark of the edit path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOUNDARY_RE = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_PARAM_RE = re.compile(rb'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class UploadedFile:
    field: str  # "image", "image[]" or "mask"
    filename: str
    content_type: str
    data: bytes


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], list[UploadedFile]]:
    """The text fields and the files of a multipart body; ValueError if it is not one."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ValueError("not multipart/form-data")
    match = _BOUNDARY_RE.search(content_type)
    if match is None:
        raise ValueError("no boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    if not body.startswith(delimiter):
        raise ValueError("the body does not start with its boundary")
    fields: dict[str, str] = {}
    files: list[UploadedFile] = []
    for chunk in body.split(b"\r\n" + delimiter)[:-1]:  # the last is "--" (the end)
        part = chunk.removeprefix(delimiter).removeprefix(b"\r\n")
        head, separator, data = part.partition(b"\r\n\r\n")
        if not separator:
            raise ValueError("a part without headers")
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        disposition = headers.get(b"content-disposition", b"")
        params = {
            key.decode(): value.decode("utf-8", "replace")
            for key, value in _PARAM_RE.findall(disposition)
        }
        if "name" not in params:
            continue
        if "filename" in params:
            kind = headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
            files.append(UploadedFile(params["name"], params["filename"], kind, data))
        else:
            fields[params["name"]] = data.decode("utf-8", "replace")
    return fields, files
