"""Reading a video upload: the one reader of ``/v1/predict`` and ``/v1/jobs``.

A request carries its video as a multipart field ``video`` (``curl -F video=@clip.mp4``) or as
the raw body (``--data-binary @clip.mp4``); either way it lands in a private temporary file of
the service's :class:`Spool` (memory holds one chunk at a time, whatever the size; the guard caps
the size and times out a stalled body). Text fields of a multipart form (model, topk, window,
stride, smooth) join the query parameters unless the query already set them. Torch-free.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .guard import ApiError

UPLOAD_FIELD = "video"
FORM_FIELDS = ("model", "topk", "window", "stride", "smooth")
#: Content types that are not a video upload (a form post, JSON, text): 415.
NOT_VIDEO = ("application/x-www-form-urlencoded", "application/json", "text/")


@dataclass(frozen=True)
class Upload:
    """A spooled upload: ``path`` is the service's private copy (removed by :meth:`discard`), ``name``
    what the client called it (used in every answer, error and warning)."""

    path: str
    name: str

    def discard(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


#: The spool folder's name: ``jedi-serve-<pid>-<random>`` in the temporary folder.
SPOOL_PREFIX = "jedi-serve-"


class Spool:
    """The service's private folder for uploads in flight (removed, with what is left in it, on
    close). A service killed before it could close (SIGKILL, a crash, power) leaves its folder
    behind: the next service to open a spool removes the folders of services that no longer run."""

    def __init__(self):
        self._dir: tempfile.TemporaryDirectory | None = None

    def open(self) -> None:
        sweep_stale_spools()
        self._dir = tempfile.TemporaryDirectory(prefix=f"{SPOOL_PREFIX}{os.getpid()}-")

    @property
    def path(self) -> str | None:
        return self._dir.name if self._dir is not None else None

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def new_path(self, filename: str) -> str:
        # the client's suffix tells FFmpeg the container; anything but letters and digits is dropped
        suffix = "".join(c for c in Path(filename.replace("\0", "")).suffix[1:17] if c.isascii() and c.isalnum())
        fd, tmp = tempfile.mkstemp(dir=self._dir.name, suffix="." + suffix if suffix else "")
        os.close(fd)
        return tmp

    async def body(self, request, filename: str) -> Upload:
        """Stream a raw request body into a new file."""
        tmp = self.new_path(filename)
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    f.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        return Upload(tmp, filename)

    def copy(self, source, filename: str) -> Upload:
        """Copy a file object (a multipart part, spooled by the parser) into a new file."""
        tmp = self.new_path(filename)
        try:
            with open(tmp, "wb") as f:
                source.seek(0)
                while chunk := source.read(1 << 20):
                    f.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        return Upload(tmp, filename)


def sweep_stale_spools(where: str | None = None) -> list[str]:
    """Remove the spool folders (ours: this user's) of services whose process is gone; the removed paths."""
    import shutil

    where = where or tempfile.gettempdir()
    removed = []
    try:
        entries = list(os.scandir(where))
    except OSError:
        return removed
    for e in entries:
        pid = e.name[len(SPOOL_PREFIX):].split("-", 1)[0]
        if not (e.name.startswith(SPOOL_PREFIX) and pid.isdigit() and e.is_dir(follow_symlinks=False)):
            continue
        try:
            if e.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)  # still running (or the pid was reused): left alone
        except ProcessLookupError:
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(e.path)
        except OSError:
            continue
    return removed


async def read_form(request, params: dict):
    """A multipart body: the parsed form (the caller closes it) and its video part. Its text fields
    join ``params`` unless the query already set them."""
    from starlette.datastructures import UploadFile
    from starlette.requests import ClientDisconnect

    try:  # python-multipart spools file parts to disk past 1 MiB
        form = await request.form(max_files=1, max_fields=8)
    except (ApiError, ClientDisconnect):
        raise  # over the size limit, stalled, or the client went away: answered by the guard
    except Exception as e:  # whatever the multipart parser makes of a malformed body
        raise ApiError(400, "malformed_request", f"cannot parse the multipart body ({e})") from None
    try:
        for k in FORM_FIELDS:
            if k in form and not isinstance(form[k], UploadFile):
                params.setdefault(k, form[k])
        upload = form.get(UPLOAD_FIELD)
        if upload is None:
            raise ApiError(400, "missing_field", f"multipart field {UPLOAD_FIELD!r} (the video file) is "
                                                 f"missing; got fields {sorted(form.keys())}")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "invalid_field", f"field {UPLOAD_FIELD!r} must be a file upload, not a text value")
    except ApiError:
        await form.close()
        raise
    return form, upload


async def read_upload(request, params: dict, spool: Spool, check: Callable[[dict], object]):
    """The request's video, spooled: ``(Upload, check(params))``. ``check`` validates the request's
    parameters (model, topk, window, ...) and runs before a raw body is read, so a request that
    would be refused is refused before its upload; a multipart form's fields are only known once it
    is parsed. ``params`` is updated in place with the form's text fields."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form, part = await read_form(request, params)
        try:
            checked = check(params)
            upload = await asyncio.to_thread(spool.copy, part.file, part.filename or "upload")
        finally:
            await form.close()
        return upload, checked
    if ctype.startswith(NOT_VIDEO):
        raise ApiError(415, "unsupported_media_type",
                       f"send the video as multipart/form-data (field {UPLOAD_FIELD!r}) or as the raw request body "
                       f"(e.g. video/mp4), not {ctype.split(';')[0]}")
    checked = check(params)
    return await spool.body(request, params.get("filename", "upload")), checked
