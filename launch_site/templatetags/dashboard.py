"""Small filters of the dashboard's templates."""

from __future__ import annotations

from datetime import UTC, datetime

from django import template

register = template.Library()


@register.filter
def unixtime(value, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Unix seconds (the task record's timestamps) as UTC text; '' when unknown."""
    try:
        return datetime.fromtimestamp(float(value), tz=UTC).strftime(fmt)
    except (TypeError, ValueError, OverflowError):
        return ""


@register.filter
def seconds(value) -> str:
    """A duration: 0.012 s, 3.4 s, 2 min 5 s, 1 h 2 min; '—' when unknown."""
    if value is None or value == "":
        return "—"
    value = float(value)
    if value < 10:
        return f"{value:.3f} s" if value < 1 else f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60)} s" if value >= 60 else f"{value:.0f} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60)} min"


@register.filter
def file_to_choose_again(field) -> str:
    """The name of the file sent in this form field when the form came back with errors
    (browsers cannot refill a file input, so the page asks for it by name); else ''."""
    form = field.form
    if not form.is_bound or not form.errors:
        return ""
    upload = form.files.get(field.html_name)
    return getattr(upload, "name", "") or ""
