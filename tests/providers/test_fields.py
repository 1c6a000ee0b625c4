import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.test import override_settings

from providers.fields import DecryptionError, Sealed
from providers.models import ProviderConfig

PLAINTEXT = "AIzaSyD-this-is-a-secret-key-f3x9"


def make_config(**overrides) -> ProviderConfig:
    config = ProviderConfig(provider_type="gemini", display_name="Gemini Fast", model_name="gemini-2.5-flash")
    for name, value in overrides.items():
        setattr(config, name, value)
    config.set_api_key(PLAINTEXT)
    config.save()
    return config


def stored_column(config: ProviderConfig) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM providers_providerconfig WHERE id = %s", [config.pk])
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_the_database_column_never_holds_the_plaintext_key(settings):
    config = make_config()
    raw = stored_column(config)
    assert PLAINTEXT not in raw
    assert "f3x9" not in raw
    assert Fernet(settings.FIELD_ENCRYPTION_KEYS[0]).decrypt(raw.encode()).decode() == PLAINTEXT


@pytest.mark.django_db
def test_a_reloaded_config_reveals_the_key_only_on_request():
    config = ProviderConfig.objects.get(pk=make_config().pk)
    assert isinstance(config.api_key, Sealed)
    assert PLAINTEXT not in repr(config.api_key) and PLAINTEXT not in str(config.api_key)
    assert config.reveal_api_key() == PLAINTEXT
    assert config.masked_key == "AIza…f3x9"


@pytest.mark.django_db
def test_assigning_a_plain_string_seals_it_at_once():
    config = make_config()
    config.api_key = "sk-another-secret-value-abcd"
    assert isinstance(config.api_key, Sealed)
    assert config.reveal_api_key() == "sk-another-secret-value-abcd"


@pytest.mark.django_db
def test_keys_rotate_old_values_still_decrypt_and_a_resave_uses_the_new_key(settings):
    old_key = settings.FIELD_ENCRYPTION_KEYS[0]
    config = make_config()
    new_key = Fernet.generate_key().decode()
    with override_settings(FIELD_ENCRYPTION_KEYS=[new_key, old_key]):
        reloaded = ProviderConfig.objects.get(pk=config.pk)
        assert reloaded.reveal_api_key() == PLAINTEXT
        assert not reloaded.api_key.is_current()
        reloaded.api_key = reloaded.api_key.rotated()
        reloaded.save(update_fields=["api_key"])
        raw = stored_column(reloaded)
    assert Fernet(new_key).decrypt(raw.encode()).decode() == PLAINTEXT
    with override_settings(FIELD_ENCRYPTION_KEYS=[new_key]):
        assert ProviderConfig.objects.get(pk=config.pk).reveal_api_key() == PLAINTEXT


@pytest.mark.django_db
def test_a_wrong_key_list_raises_a_clear_error_naming_the_field():
    config = make_config()
    with override_settings(FIELD_ENCRYPTION_KEYS=[Fernet.generate_key().decode()]):
        reloaded = ProviderConfig.objects.get(pk=config.pk)
        with pytest.raises(DecryptionError) as caught:
            reloaded.reveal_api_key()
    message = str(caught.value)
    assert "providers.ProviderConfig.api_key" in message
    assert "FIELD_ENCRYPTION_KEYS" in message and "wrong" in message
    assert PLAINTEXT not in message and stored_column(config) not in message
