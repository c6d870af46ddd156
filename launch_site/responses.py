"""Responses that Django would serve badly under ASGI."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import FileResponse


class FileStreamResponse(FileResponse):
    """A FileResponse that an ASGI server sends chunk by chunk. Django's reads a file (a sync
    iterator) whole into memory before sending any of it under ASGI
    (StreamingHttpResponse.__aiter__): a 2 GB bundle download cost 2 GB of the web worker's
    memory. Here each chunk is read in a thread as it is sent. Under WSGI nothing changes."""

    async def __aiter__(self):
        chunks = iter(self.streaming_content)
        read = sync_to_async(next, thread_sensitive=False)
        while (chunk := await read(chunks, None)) is not None:
            yield chunk
