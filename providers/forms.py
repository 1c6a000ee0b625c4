from django import forms

from providers.models import ProviderConfig
from providers.serializers import WRITABLE_FIELDS


class ProviderConfigAdminForm(forms.ModelForm):
    """The admin form. The key is write-only: it is never rendered back into the page."""

    new_api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        max_length=500,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the current key.",
    )

    class Meta:
        model = ProviderConfig
        fields = [name for name in WRITABLE_FIELDS if name != "api_key"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is None:
            self.fields["new_api_key"].required = True
            self.fields["new_api_key"].help_text = "Stored encrypted; never shown again."
        else:
            self.fields["new_api_key"].help_text = f"Current key: {self.instance.masked_key}. Leave empty to keep it."

    def save(self, commit=True):
        config = super().save(commit=False)
        if self.cleaned_data.get("new_api_key"):
            config.set_api_key(self.cleaned_data["new_api_key"])
        if commit:
            config.save()
        return config
