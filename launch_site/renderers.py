"""The API's JSON renderer: DRF's, which also sends JSON text rendered beforehand (RenderedJSON)
as it is, so that an answer rendered once can be sent again without building and encoding
its object again (endpoints.api.views.rendered_answers)."""

from __future__ import annotations

import functools
import json

from rest_framework import renderers
from rest_framework.compat import LONG_SEPARATORS, SHORT_SEPARATORS


class RenderedJSON(bytes):
    """JSON text exactly as JSONRenderer renders its value when no indent is asked for."""


def rendered_object(key: str, items: list[RenderedJSON]) -> RenderedJSON:
    """What JSONRenderer renders of {key: [the items' values]}: without an indent the encoder
    writes a value inside an object or a list exactly as it writes that value alone."""
    return RenderedJSON(b"{" + _RENDERER.render(key) + b":[" + b",".join(items) + b"]}")


class JSONRenderer(renderers.JSONRenderer):
    def render_unindented(self, data) -> RenderedJSON:
        """render(data) when no indent is asked for, the same bytes, with one encoder made for
        all calls: json.dumps makes one per call, which cost a tenth of rendering an endpoint."""
        text = self._unindented_encoder.encode(data)
        return RenderedJSON(text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode())

    @functools.cached_property
    def _unindented_encoder(self) -> json.JSONEncoder:
        # As renderers.JSONRenderer.render calls json.dumps with no indent.
        return self.encoder_class(
            ensure_ascii=self.ensure_ascii, allow_nan=not self.strict,
            separators=SHORT_SEPARATORS if self.compact else LONG_SEPARATORS,
        )

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if isinstance(data, RenderedJSON):
            if self.get_indent(accepted_media_type, renderer_context or {}) is None:
                return data
            data = json.loads(data)  # `Accept: application/json; indent=N`: rendered again, indented
        return super().render(data, accepted_media_type, renderer_context)


_RENDERER = JSONRenderer()
