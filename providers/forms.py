from django import forms

from providers.models import ProviderConfig
from providers.serializers import WRITABLE_FIELDS
from providers.validators import key_origin_change, validate_api_key


class ProviderConfigAdminForm(forms.ModelForm):
    """The admin form. The key is write-only: it is never rendered back into the page."""

    new_api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        max_length=500,
        validators=[validate_api_key],
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the current key.",
    )

    class Meta:
        model = ProviderConfig
        fields = [name for name in WRITABLE_FIELDS if name != "api_key"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Where the stored key was entered for, read before validation copies the form's values onto the instance.
        self.stored_key_for = (self.instance.provider_type, self.instance.base_url) if self.instance.pk else None
        if self.instance.pk is None:
            self.fields["new_api_key"].required = True
            self.fields["new_api_key"].help_text = "Stored encrypted; never shown again."
        else:
            self.fields["new_api_key"].help_text = f"Current key: {self.instance.masked_key}. Leave empty to keep it."

    def clean(self):
        cleaned = super().clean()
        provider_type = cleaned.get("provider_type")
        if self.stored_key_for is not None and not cleaned.get("new_api_key") and provider_type:
            # A stored key is sent only where it was entered for, by "Save" and by "Test credentials" alike.
            old_type, old_base_url = self.stored_key_for
            problem = key_origin_change(
                old_type=old_type,
                old_base_url=old_base_url,
                new_type=provider_type,
                new_base_url=cleaned.get("base_url", ""),
            )
            if problem:
                self.add_error("new_api_key", problem)
        return cleaned

    def save(self, commit=True):
        config = super().save(commit=False)
        if self.cleaned_data.get("new_api_key"):
            config.set_api_key(self.cleaned_data["new_api_key"])
        if commit:
            config.save()
        return config
