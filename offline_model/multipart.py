"""Reading a multipart/form-data body (the images edit request), with the standard library."""

from __future__ import annotations

from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP


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
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ValueError("no parts")
    fields: dict[str, str] = {}
    files: list[UploadedFile] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            fields[name] = data.decode("utf-8", "replace")
        else:
            files.append(UploadedFile(name, filename, part.get_content_type(), data))
    return fields, files
