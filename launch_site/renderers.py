"""The API's JSON renderer: DRF's, which also sends JSON text rendered beforehand (RenderedJSON)
as it is, so that an answer rendered once can be sent again without building and encoding
its object again (endpoints.api.views.rendered_answers)."""

from __future__ import annotations

import json

from rest_framework import renderers


class RenderedJSON(bytes):
    """JSON text exactly as JSONRenderer renders its value when no indent is asked for."""


def rendered_object(key: str, items: list[RenderedJSON]) -> RenderedJSON:
    """What JSONRenderer renders of {key: [the items' values]}: without an indent the encoder
    writes a value inside an object or a list exactly as it writes that value alone."""
    return RenderedJSON(b"{" + _RENDERER.render(key) + b":[" + b",".join(items) + b"]}")


class JSONRenderer(renderers.JSONRenderer):
    def render(self, data, accepted_media_type=None, renderer_context=None):
        if isinstance(data, RenderedJSON):
            if self.get_indent(accepted_media_type, renderer_context or {}) is None:
                return data
            data = json.loads(data)  # `Accept: application/json; indent=N`: rendered again, indented
        return super().render(data, accepted_media_type, renderer_context)


_RENDERER = JSONRenderer()
