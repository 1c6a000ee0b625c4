"""Create the demo provider configurations, pointed at the fake providers (idempotent; a re-run with another
--fake-url points the existing demo configs there)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from providers import services
from providers.models import ProviderConfig

DEMO_CONFIGS = [
    {
        "provider_type": "gemini",
        "display_name": "Gemini Fast (demo)",
        "model_name": "gemini-2.5-flash",
        "api_key": "AIzaSyDemo-not-a-real-key-000000-gem1",
        "path": "gemini",
        "default_for_extraction": True,
        "default_for_image_validation": True,
        "priority": 10,
        "daily_token_limit": 2_000_000,
        "monthly_token_limit": 40_000_000,
    },
    {
        "provider_type": "openai",
        "display_name": "OpenAI GPT-4o mini (demo)",
        "model_name": "gpt-4o-mini",
        "api_key": "sk-demo-not-a-real-key-000000-oai1",
        "path": "openai/v1",
        "default_for_extraction": True,
        "default_for_cv_drafting": True,
        "default_for_cover_letter": True,
        "priority": 20,
    },
    {
        "provider_type": "claude",
        "display_name": "Claude Sonnet (demo)",
        "model_name": "claude-sonnet-4-5",
        "api_key": "sk-ant-demo-not-a-real-key-000000-ant1",
        "path": "anthropic",
        "default_for_cv_drafting": True,
        "default_for_cover_letter": True,
        "priority": 10,
    },
]


class Command(BaseCommand):
    help = "Create demo provider configurations that talk to the fake providers (python manage.py fake_providers)."

    def add_arguments(self, parser):
        parser.add_argument("--fake-url", default="http://127.0.0.1:8900", help="Where the fake providers listen.")
        parser.add_argument("--user", required=True, help="Username recorded as the creator in the audit log.")

    def handle(self, *args, fake_url: str, user: str, **options):
        try:
            actor = get_user_model().objects.get(username=user)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user named {user!r}; create it first (create_superadmin).") from None
        for spec in DEMO_CONFIGS:
            data = {key: value for key, value in spec.items() if key != "path"}
            data["base_url"] = f"{fake_url.rstrip('/')}/{spec['path']}"
            existing = ProviderConfig.objects.filter(display_name=data["display_name"]).first()
            if existing is None:
                services.provider_config_create(user=actor, data=data)
                self.stdout.write(self.style.SUCCESS(f"created    {data['display_name']}"))
            elif existing.base_url != data["base_url"]:
                # A re-run with another FAKE_PORT: follow the fake providers, keep whatever else was changed.
                services.provider_config_update(config=existing, user=actor, data={"base_url": data["base_url"]})
                self.stdout.write(self.style.SUCCESS(f"repointed  {data['display_name']} to {data['base_url']}"))
            else:
                self.stdout.write(f"unchanged  {data['display_name']}")
