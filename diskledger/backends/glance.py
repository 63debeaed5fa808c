"""An image service's image as a template source: ``glance://IMAGE_ID`` (OpenStack Glance, API v2).

The image's record is read once, when the source is made, before the fetch records its intent
(``GET {service}/v2/images/{id}``): an image the service does not have, that is not ``active``,
or whose ``disk_format`` is not the one declared is refused then, with one line, and nothing is
recorded. The data (``GET …/file``) is brought in by ``HttpSource``, the one downloader (timeouts,
bounded retries, Range resume, ceilings, TLS), verified while it is written against the hash the
service recorded: ``os_hash_algo``/``os_hash_value`` (sha512 by default; any algorithm hashlib
has), or the md5 ``checksum`` when the service recorded no multihash. A mismatch is refused like a
sha256 mismatch and recorded as the fetch's failure.

When the service keeps the image in the Ceph cluster the rbd backend uses (its ``direct_url`` is
``rbd://<fsid>/<pool>/<id>/snap``), the data is not downloaded at all: the template is cloned
from that snapshot (``ClonesTemplates``, Nova's fast path); see docs/templates.md.

Two GET requests with ``requests``, which the HTTP source already uses, rather than a client
library (python-glanceclient or openstacksdk): see docs/templates.md.

Settings, besides the download's (``diskledger.backends.sources``):

``DISKLEDGER_GLANCE_URL``    the image service's endpoint, e.g. ``http://127.0.0.1:9292``
``DISKLEDGER_GLANCE_TOKEN``  a token sent as ``X-Auth-Token`` when set (never recorded)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diskledger.backends.sources import HttpSettings, HttpSource, _reason, check_url
from diskledger.errors import InvalidInput, InvalidSource

__all__ = ["GlanceSource", "glance_source", "is_glance"]

_IMAGE_ID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
_HEX = re.compile(r"[0-9a-f]+")


def is_glance(text: str) -> bool:
    """Whether ``text`` names an image service's image (``glance://…``)."""
    return text[:9].lower() == "glance://"


@dataclass(frozen=True, slots=True)
class GlanceSource:
    """An active image of an image service, with the hash its data must have."""

    image_id: str
    service: str
    """The service's endpoint (``DISKLEDGER_GLANCE_URL``), recorded beside the source."""
    checksum: tuple[str, str]
    size: int | None
    download: HttpSource
    locations: tuple[str, ...] = ()
    """Where the service keeps the image's data (its ``direct_url``, then any other of its
    ``locations``), for a template store that can clone from one (``ClonesTemplates``)."""

    def describe(self) -> str:
        return f"glance://{self.image_id}"

    def recorded(self) -> dict[str, str]:
        """What the fetch's intent records besides the source and the checksum: the service's
        URL (never the token)."""
        return {"service": self.service}

    def copy_to(self, path: str, *, limit: int, op: str) -> None:
        self.download.copy_to(path, limit=limit, op=op)


def glance_source(
    text: str, *, fmt: str | None = None, environ: Mapping[str, str] = os.environ
) -> GlanceSource:
    """The image ``glance://IMAGE_ID`` names, looked up in the service ``DISKLEDGER_GLANCE_URL``.

    Raises:
        InvalidSource: Not an image id; the service does not answer, does not have the image,
            refuses the token; the image is not active, or its ``disk_format`` is not ``fmt``, or
            it has no hash to verify.
        InvalidInput: ``DISKLEDGER_GLANCE_URL`` is not set or not an http(s) URL, or a download
            setting is out of range.
    """
    image_id = text[len("glance://") :]
    shown = f"glance://{image_id}"
    if not _IMAGE_ID.fullmatch(image_id):
        raise InvalidSource(f"source {shown}: {image_id!r} is not an image id (a UUID)")
    image_id = image_id.lower()
    shown = f"glance://{image_id}"
    service = (environ.get("DISKLEDGER_GLANCE_URL") or "").rstrip("/")
    if not service:
        raise InvalidInput(
            f"source {shown}: set DISKLEDGER_GLANCE_URL to the image service's endpoint "
            "(e.g. http://127.0.0.1:9292)"
        )
    try:
        check_url(service)
    except InvalidSource as exc:
        raise InvalidInput(f"DISKLEDGER_GLANCE_URL: {exc}") from None
    settings = HttpSettings.from_environ(environ)
    token = environ.get("DISKLEDGER_GLANCE_TOKEN") or ""
    headers = (("X-Auth-Token", token),) if token else ()
    record = _image(service, image_id, shown, settings, dict(headers))
    status = record.get("status")
    if status != "active":
        raise InvalidSource(
            f"source {shown}: the image is {status}, not active (it has no data to fetch yet, "
            "or no longer); refused"
        )
    disk_format = record.get("disk_format")
    if fmt is not None and disk_format != fmt:
        raise InvalidSource(
            f"source {shown}: the image service has it as {disk_format}, not the {fmt} "
            "declared; refused"
        )
    checksum = _checksum(record, shown)
    size = record.get("size")
    return GlanceSource(
        locations=_locations(record),
        image_id=image_id,
        service=service,
        checksum=checksum,
        size=size if isinstance(size, int) and size >= 0 else None,
        download=HttpSource(
            f"{service}/v2/images/{image_id}/file",
            checksum,
            # The token goes to the service alone: a redirect could carry it elsewhere.
            dataclasses.replace(settings, max_redirects=0),
            name=shown,
            headers=headers,
            checksum_from="the image service recorded",
        ),
    )


def _image(
    service: str, image_id: str, shown: str, settings: HttpSettings, headers: dict[str, str]
) -> dict[str, Any]:
    """The image's record (``GET /v2/images/{id}``), or a one-line refusal."""
    import requests

    try:
        with requests.Session() as session:
            answer = session.get(
                f"{service}/v2/images/{image_id}",
                headers={"Accept": "application/json", **headers},
                timeout=(settings.connect_timeout, settings.read_timeout),
                verify=settings.ca_bundle or True,
                allow_redirects=False,
            )
    except requests.RequestException as exc:
        raise InvalidSource(
            f"source {shown}: the image service at {service} did not answer ({_reason(exc)})"
        ) from exc
    if answer.status_code == 404:
        raise InvalidSource(f"source {shown}: the image service at {service} has no such image")
    if answer.status_code in (401, 403):
        raise InvalidSource(
            f"source {shown}: the image service at {service} refused the request "
            f"({answer.status_code} {answer.reason}); check DISKLEDGER_GLANCE_TOKEN"
        )
    if answer.status_code != 200:
        raise InvalidSource(
            f"source {shown}: the image service at {service} answered "
            f"{answer.status_code} {answer.reason}"
        )
    try:
        record = answer.json()
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise InvalidSource(
            f"source {shown}: the image service at {service} did not answer with an image record"
        )
    return record


def _locations(record: Mapping[str, Any]) -> tuple[str, ...]:
    """The image's store locations the service shows (``direct_url`` with
    ``show_image_direct_url``, ``locations`` with ``show_multiple_locations``), each once."""
    urls = [record.get("direct_url")]
    listed = record.get("locations")
    if isinstance(listed, list):
        urls += [entry.get("url") for entry in listed if isinstance(entry, dict)]
    return tuple(dict.fromkeys(url for url in urls if isinstance(url, str) and url))


def _checksum(record: Mapping[str, Any], shown: str) -> tuple[str, str]:
    """The hash to verify: the multihash (``os_hash_algo``/``os_hash_value``), else the md5
    ``checksum``; refused when the service recorded neither, or one hashlib cannot compute."""
    algorithm, value = record.get("os_hash_algo"), record.get("os_hash_value")
    if not (algorithm and value):
        algorithm, value = "md5", record.get("checksum")
        if not value:
            raise InvalidSource(
                f"source {shown}: the image service recorded no hash of the image to verify"
            )
    algorithm, value = str(algorithm).lower(), str(value).lower()
    try:
        width = hashlib.new(algorithm).digest_size * 2
    except ValueError:
        raise InvalidSource(
            f"source {shown}: the image service hashed the image with {algorithm}, which "
            "cannot be verified here"
        ) from None
    if len(value) != width or not _HEX.fullmatch(value):
        raise InvalidSource(
            f"source {shown}: the image service's {algorithm} {value!r} is not a {algorithm} digest"
        )
    return (algorithm, value)
