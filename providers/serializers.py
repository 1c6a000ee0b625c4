from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from providers.models import TASK_FLAGS, ProviderConfig, Task
from providers.validators import key_origin_change, validate_api_key, validate_model_for_provider

WRITABLE_FIELDS = [
    "provider_type",
    "display_name",
    "model_name",
    "api_key",
    "base_url",
    "is_active",
    "default_for_extraction",
    "default_for_image_validation",
    "default_for_cv_drafting",
    "default_for_cover_letter",
    "priority",
    "weight",
    "daily_token_limit",
    "monthly_token_limit",
    "input_price_per_million",
    "output_price_per_million",
    "request_timeout_seconds",
]


class RejectUnknownFieldsMixin:
    """A misspelt field must be an error, not silently ignored (`is_activ: false` would leave it active)."""

    rejects_unknown_fields = True  # aditus.openapi says so in the schema

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().validate(attrs)


class TaskListField(serializers.ListField):
    """The tasks a config serves, as the output's `tasks` list: each a known task, once."""

    def __init__(self, **kwargs):
        super().__init__(child=serializers.CharField(), allow_empty=True, **kwargs)

    def to_internal_value(self, data):
        tasks = super().to_internal_value(data)
        unknown = [task for task in tasks if task not in TASK_FLAGS]
        if unknown:
            raise serializers.ValidationError(
                f"Unknown task(s): {', '.join(unknown)}. The tasks are {', '.join(Task.values)}."
            )
        if len(set(tasks)) != len(tasks):
            raise serializers.ValidationError("Name each task once.")
        return tasks


class ProviderConfigInputSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):
    # Write-only. On update an omitted or empty key keeps the stored one.
    api_key = serializers.CharField(
        write_only=True, max_length=500, trim_whitespace=True, validators=[validate_api_key]
    )
    # The seed's two spellings: a list (as the output has it), or the default_for_* booleans; not both at once.
    tasks = TaskListField(
        required=False,
        write_only=True,
        help_text="The tasks served; tasks not listed are switched off. Instead of the default_for_* flags.",
    )

    class Meta:
        model = ProviderConfig
        fields = [*WRITABLE_FIELDS, "tasks"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance is not None:
            self.fields["api_key"].required = False
            self.fields["api_key"].allow_blank = True

    def validate_model_name(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("This field may not be blank.")
        return value

    def validate(self, attrs):
        attrs = super().validate(attrs)
        instance = self.instance
        provider_type = attrs.get("provider_type", getattr(instance, "provider_type", ""))
        if "model_name" in attrs or "provider_type" in attrs:
            model_name = attrs.get("model_name", getattr(instance, "model_name", ""))
            try:
                validate_model_for_provider(provider_type, model_name)
            except DjangoValidationError as error:
                raise serializers.ValidationError({"model_name": error.messages}) from None
        if instance is not None and not attrs.get("api_key"):
            # A stored key is sent only where it was entered for: a new host (or provider) needs the key again.
            problem = key_origin_change(
                old_type=instance.provider_type,
                old_base_url=instance.base_url,
                new_type=provider_type,
                new_base_url=attrs.get("base_url", instance.base_url),
            )
            if problem:
                raise serializers.ValidationError({"api_key": [problem]})
        if "tasks" in attrs:
            flags = [flag for flag in TASK_FLAGS.values() if flag in attrs]
            if flags:
                raise serializers.ValidationError(
                    {"tasks": [f"Give either tasks or the flags {', '.join(flags)}, not both."]}
                )
            tasks = attrs.pop("tasks")
            attrs.update({flag: task in tasks for task, flag in TASK_FLAGS.items()})
        return attrs


class ProviderSettingsTestSerializer(ProviderConfigInputSerializer):
    """The create body, for testing before saving: the name need not be unique, nothing is stored."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["display_name"].validators = []
        self.fields["display_name"].required = False


class ProviderConfigOutputSerializer(serializers.ModelSerializer):
    api_key_masked = serializers.CharField(source="masked_key", read_only=True)
    tasks = serializers.ListField(child=serializers.CharField(), read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    updated_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ProviderConfig
        fields = ["id", *[name for name in WRITABLE_FIELDS if name != "api_key"]] + [
            "api_key_masked",
            "tasks",
            "key_updated_at",
            "created_at",
            "created_by",
            "updated_at",
            "updated_by",
            "last_tested_at",
            "last_test_ok",
            "last_test_error",
        ]
        read_only_fields = fields


class CredentialTestResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    error_type = serializers.CharField(allow_null=True)
    message = serializers.CharField(allow_blank=True)
    model = serializers.CharField(allow_null=True)
