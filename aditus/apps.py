from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import pre_save


class AditusConfig(AppConfig):
    name = "aditus"
    verbose_name = "Access"

    def ready(self) -> None:
        from aditus import checks, signals  # noqa: F401 - importing checks registers them

        pre_save.connect(
            signals.revoke_tokens_when_the_password_changes,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="aditus.revoke_tokens_when_the_password_changes",
        )
