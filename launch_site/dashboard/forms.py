"""Dashboard forms: types and required fields only; the rules live in the services, whose
errors are put back next to the field they name (common.add_service_error)."""

from __future__ import annotations

import json

from django import forms

from endpoints.models import GPU_TYPES
from endpoints.quantities import parse_bytes, parse_cpus

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_HELP = "Letters, digits, '-', '_' and '.', starting with a letter or digit."


class JSONTextField(forms.CharField):
    """A textarea holding JSON of one expected type (list or dict); empty means `empty`."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono"})

    def __init__(self, *, expected: type, empty: object = None, **kwargs):
        self.expected, self.empty = expected, empty
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_python(self, value):
        text = super().to_python(value).strip()
        if not text:
            return self.empty
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise forms.ValidationError(f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})")
        if not isinstance(parsed, self.expected):
            kind = "a JSON list" if self.expected is list else "a JSON object"
            raise forms.ValidationError(f"must be {kind}")
        return parsed

    def prepare_value(self, value):
        # Initial values are Python objects: show them as JSON, not as their repr.
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value)

    def validate(self, value):
        # Django counts {} and [] as "empty"; here they are real values (a predict with no args).
        if self.required and value is None:
            raise forms.ValidationError(self.error_messages["required"], code="required")


class BundleUploadForm(forms.Form):
    name = forms.CharField(max_length=200)
    file = forms.FileField(help_text="A cloudpickled bundle (.pkl) or a zip bundle.")
    packaging_type = forms.ChoiceField(
        choices=[("cloudpickle", "cloudpickle"), ("zip", "zip")], initial="cloudpickle", required=False
    )
    requirements = JSONTextField(
        expected=list, empty=[], help_text='Optional JSON list of pip requirements, e.g. ["numpy==2.1.0"].'
    )
    app_config = JSONTextField(expected=dict, empty=None, help_text="Optional JSON object passed to your functions.")
    python_version = forms.CharField(
        required=False,
        max_length=16,
        help_text='The Python that pickled it, e.g. "3.11": replicas on another version refuse it with a clear reason.',
    )
    load_predict_fn_module_path = forms.CharField(
        required=False, max_length=300, help_text="Zip bundles: dotted path of load_predict_fn."
    )
    load_model_fn_module_path = forms.CharField(
        required=False, max_length=300, help_text="Zip bundles: dotted path of load_model_fn."
    )

    def clean_requirements(self):
        requirements = self.cleaned_data["requirements"]
        if not all(isinstance(item, str) for item in requirements):
            raise forms.ValidationError("must be a list of strings")
        return requirements


class RunnableImageBundleForm(forms.Form):
    """A bundle that is the user's own server image (bundles.services.bundle_create_runnable_image
    checks every field; its errors land next to the field they name)."""

    name = forms.CharField(max_length=200)
    flavor = forms.ChoiceField(
        choices=[
            ("runnable_image", "runnable_image: predict and healthcheck routes"),
            ("streaming_enhanced_runnable_image", "streaming_enhanced_runnable_image: plus a streaming route (SSE)"),
        ],
        initial="runnable_image",
    )
    repository = forms.CharField(max_length=300, help_text="e.g. registry.example.com/my-server")
    tag = forms.CharField(max_length=128, help_text="e.g. 1.2.0")
    command = JSONTextField(
        expected=list, empty=None, help_text='JSON list: how to start your server, e.g. ["python", "server.py"].'
    )
    env = JSONTextField(expected=dict, empty=None, help_text='Optional JSON object, e.g. {"MODEL": "small"}.')
    predict_route = forms.CharField(max_length=300, initial="/predict")
    healthcheck_route = forms.CharField(max_length=300, initial="/readyz", help_text="Answers 200 once ready.")
    readiness_initial_delay_seconds = forms.IntegerField(
        initial=120, label="Readiness delay (s)", help_text="How long the healthcheck may take to answer 200."
    )
    streaming_command = JSONTextField(
        expected=list, empty=None, help_text="Streaming flavor: JSON list, the command of your streaming server."
    )
    streaming_predict_route = forms.CharField(
        max_length=300, required=False, help_text="Streaming flavor: its server-sent events route (default /stream)."
    )

    def flavor_values(self) -> dict:
        """The flavor's fields for the service. The streaming ones go when the flavor is the
        streaming one or when they are filled in: a runnable_image given one is refused by the
        service, on that field, rather than the value being dropped."""
        data = self.cleaned_data
        values = {"protocol": "http", "command": data["command"] if data["command"] is not None else [],
                  "env": data["env"]}
        for key in ("repository", "tag", "predict_route", "healthcheck_route", "readiness_initial_delay_seconds"):
            values[key] = data[key]
        streaming = data["flavor"] == "streaming_enhanced_runnable_image"
        for key in ("streaming_command", "streaming_predict_route"):
            if streaming or data[key]:
                values[key] = data[key] or None
        return values


def bundle_choices(bundles) -> list[tuple[str, str]]:
    return [(b.id, f"{b.name} · {b.id} · {b.created_at:%Y-%m-%d %H:%M}") for b in bundles]


class EndpointForm(forms.Form):
    name = forms.RegexField(
        NAME_PATTERN,
        max_length=63,
        help_text=NAME_HELP,
        error_messages={"invalid": "This name has characters that are not allowed."},
    )
    bundle = forms.ChoiceField(choices=[])
    endpoint_type = forms.ChoiceField(
        choices=[("sync", "sync: answers while the caller waits"), ("async", "async: returns a task id")],
        initial="sync",
        widget=forms.RadioSelect,
    )
    min_workers = forms.IntegerField(min_value=0, initial=1)
    max_workers = forms.IntegerField(min_value=0, initial=1)
    per_worker = forms.IntegerField(min_value=1, initial=1, help_text="Requests one worker handles at once.")
    cpus = forms.CharField(max_length=32, initial="1", label="CPUs", help_text='1, 0.5 or "500m".')
    memory = forms.CharField(max_length=32, initial="1Gi", help_text='"1Gi", "512Mi".')
    gpus = forms.IntegerField(min_value=0, initial=0, label="GPUs")
    gpu_type = forms.ChoiceField(choices=[("", "none"), *[(t, t) for t in GPU_TYPES]], required=False, label="GPU type")

    def __init__(self, *args, bundles=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["bundle"].choices = bundle_choices(bundles)

    # The quantity parsers are the services' own; checking here shows every bad field at once.
    def clean_cpus(self):
        return _quantity(self.cleaned_data["cpus"], parse_cpus)

    def clean_memory(self):
        return _quantity(self.cleaned_data["memory"], parse_bytes)


def _quantity(value: str, parse) -> str:
    try:
        parse(value)
    except ValueError as error:
        raise forms.ValidationError(str(error))
    return value


class EndpointEditForm(forms.Form):
    """Every field of the API's update (UpdateModelEndpointV1Request) that changes something
    here; prewarm and optimize_costs have one accepted value each, so they are not offered.
    An optional field left blank keeps the endpoint's value (the API's null)."""

    bundle = forms.ChoiceField(choices=[])
    min_workers = forms.IntegerField(min_value=0)
    max_workers = forms.IntegerField(min_value=0)
    per_worker = forms.IntegerField(min_value=1, required=False, help_text="Requests one worker handles at once.")
    cpus = forms.CharField(max_length=32, required=False, label="CPUs", help_text='1, 0.5 or "500m".')
    memory = forms.CharField(max_length=32, required=False, help_text='"1Gi", "512Mi".')
    storage = forms.CharField(max_length=32, required=False, help_text='Scratch disk per replica, e.g. "10Gi".')
    gpus = forms.IntegerField(min_value=0, required=False, label="GPUs")
    gpu_type = forms.ChoiceField(choices=[("", "none"), *[(t, t) for t in GPU_TYPES]], required=False, label="GPU type")
    labels = JSONTextField(expected=dict, empty={}, help_text='JSON object of strings, e.g. {"team": "search"}.')
    metadata = JSONTextField(expected=dict, empty={}, help_text="JSON object, kept with the endpoint.")
    billing_tags = JSONTextField(
        expected=dict, empty=None, help_text="JSON object; shown with this endpoint's usage figures."
    )
    post_inference_hooks = JSONTextField(expected=list, empty=None, help_text='JSON list, e.g. ["callback"].')
    default_callback_url = forms.CharField(
        max_length=1000, required=False, help_text="Called after each async task that names no callback_url."
    )
    default_callback_auth = JSONTextField(
        expected=dict, empty=None, help_text='JSON object, e.g. {"kind": "basic", "username": "u", "password": "p"}.'
    )
    task_expires_seconds = forms.IntegerField(min_value=1, required=False, help_text="How long a task may wait.")
    queue_message_timeout_seconds = forms.IntegerField(
        min_value=1, max_value=43200, required=False, help_text="A task running longer fails and its replica is replaced."
    )
    high_priority = forms.BooleanField(required=False, help_text="Placed before other endpoints when capacity is short.")
    # Bounds and rules: endpoints.services._apply_batching (its errors land on these fields).
    max_batch_size = forms.IntegerField(
        required=False, label="Max batch size",
        help_text="Requests per call of the bundle's batch predict (docs/batching.md); 0 turns batching off.",
    )
    max_batch_wait_ms = forms.IntegerField(
        required=False, label="Max batch wait (ms)", help_text="How long a batch waits to fill after its first request."
    )

    def __init__(self, *args, bundles=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["bundle"].choices = bundle_choices(bundles)

    # Checked here, with the services' own parsers, so that every bad field shows at once.
    def clean_cpus(self):
        return _quantity(self.cleaned_data["cpus"], parse_cpus) if self.cleaned_data["cpus"] else None

    def clean_memory(self):
        return _quantity(self.cleaned_data["memory"], parse_bytes) if self.cleaned_data["memory"] else None

    def clean_storage(self):
        return _quantity(self.cleaned_data["storage"], parse_bytes) if self.cleaned_data["storage"] else None

    def clean_labels(self):
        labels = self.cleaned_data["labels"]
        if not all(isinstance(value, str) for value in labels.values()):
            raise forms.ValidationError("every value must be a string")
        return labels

    def clean_post_inference_hooks(self):
        hooks = self.cleaned_data["post_inference_hooks"]
        if hooks is not None and not all(isinstance(hook, str) for hook in hooks):
            raise forms.ValidationError("must be a list of strings")
        return hooks

    def clean(self):
        data = super().clean()
        low, high = data.get("min_workers"), data.get("max_workers")
        if low is not None and high is not None and high < low:
            self.add_error("max_workers", f"must be >= min_workers ({low})")
        return data

    def changes(self, endpoint) -> dict:
        """What to send to endpoint_update: blank optional fields are left out (unchanged)."""
        data = self.cleaned_data
        changes = {name: data[name] for name in self.fields if name != "bundle" and data.get(name) not in (None, "")}
        if data["bundle"] != endpoint.bundle_id:
            changes["model_bundle_id"] = data["bundle"]
        return changes

    @staticmethod
    def initial_for(endpoint) -> dict:
        names = [name for name in EndpointEditForm.base_fields if name != "bundle"]
        return {"bundle": endpoint.bundle_id, **{name: getattr(endpoint, name) for name in names}}


class TryItForm(forms.Form):
    args = JSONTextField(
        expected=dict,
        required=True,
        help_text='Keyword arguments of your predict function, as a JSON object: {"x": 21}.',
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "class": "mono"}),
    )


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, help_text="What the key is for, e.g. ci or laptop.")


class BatchJobForm(forms.Form):
    bundle = forms.ChoiceField(choices=[])
    input_file = forms.FileField(
        help_text='A JSON list of items such as {"args": {"x": 1}} (or {"url": ...}), the same as JSON lines, '
        "or the client's CSV with an id and an args column."
    )
    max_workers = forms.IntegerField(min_value=1, initial=1)
    per_worker = forms.IntegerField(min_value=1, initial=1)
    cpus = forms.CharField(max_length=32, initial="1", label="CPUs")
    memory = forms.CharField(max_length=32, initial="1Gi")

    def __init__(self, *args, bundles=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["bundle"].choices = bundle_choices(bundles)

    def clean_cpus(self):
        return _quantity(self.cleaned_data["cpus"], parse_cpus)

    def clean_memory(self):
        return _quantity(self.cleaned_data["memory"], parse_bytes)
