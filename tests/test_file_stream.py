"""Files served under ASGI (bundle downloads, batch results) are read as they are sent, not
whole into the web worker's memory first (what Django's FileResponse does under ASGI)."""

from __future__ import annotations

import asyncio
import io

from launch_site.responses import FileStreamResponse


class CountingFile(io.BytesIO):
    def __init__(self, size: int):
        super().__init__(b"x" * size)
        self.reads = 0

    def read(self, size=-1):
        self.reads += 1
        return super().read(size)


def test_an_asgi_server_gets_the_file_chunk_by_chunk_as_it_sends():
    source = CountingFile(10 * 65536)
    response = FileStreamResponse(source, content_type="application/octet-stream")
    response.block_size = 65536

    async def first_two_chunks():
        chunks = aiter(response)
        return [await anext(chunks), await anext(chunks)]

    assert [len(chunk) for chunk in asyncio.run(first_two_chunks())] == [65536, 65536]
    assert source.reads <= 3  # not the whole file (11 reads) before the first chunk went out
    assert response["Content-Length"] == str(10 * 65536)


def test_the_whole_file_arrives():
    response = FileStreamResponse(CountingFile(100_001), content_type="application/octet-stream")
    response.block_size = 4096

    async def everything():
        return b"".join([chunk async for chunk in response])

    assert asyncio.run(everything()) == b"x" * 100_001
