"""Create or update provider configs from a YAML file, idempotently, matched by display name."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from providers import services
from providers.management.help_format import EpilogAsWrittenFormatter
from providers.seeding import SeedError, seed_file_read, seed_plan

EPILOG = """\
The file (examples in providers/seed_examples/):

  providers:
    - display_name: Gemini Fast        # matched by name: created, or updated in place
      provider_type: gemini            # gemini | openai | claude
      model_name: gemini-2.5-flash
      api_key_env: GEMINI_API_KEY      # name of the variable holding the key; never the key itself
      tasks: [extraction, image_validation]   # or `all`; tasks not listed are switched off
      priority: 10
      weight: 1
      daily_token_limit: 2000000

Other fields: base_url, is_active, monthly_token_limit, input_price_per_million, output_price_per_million,
request_timeout_seconds. A field left out keeps its stored value on an update (write null to clear a limit).
The whole file is validated first; if any entry is invalid nothing is written. Every change is audited.
"""


class Command(BaseCommand):
    help = (
        "Create or update provider configs from a YAML file (idempotent, matched by display_name); API keys are "
        "read from the environment variables the file names. Reports what was created, changed and left alone."
    )

    def add_arguments(self, parser):
        parser.formatter_class = EpilogAsWrittenFormatter
        parser.epilog = EPILOG
        parser.add_argument("--file", required=True, help="The YAML seed file.")
        parser.add_argument("--dry-run", action="store_true", help="Validate and report; save nothing.")
        parser.add_argument(
            "--as",
            dest="as_user",
            metavar="USERNAME",
            help="Superuser recorded in the audit log (default: the only superuser, if there is exactly one).",
        )

    def handle(self, *args, file: str, dry_run: bool, as_user: str | None, **options):
        try:
            user = services.acting_user_get(username=as_user)
        except services.ActingUserError as exc:
            raise CommandError(str(exc)) from None
        try:
            entries = seed_file_read(file)
            with transaction.atomic():
                plan = seed_plan(entries)
                for entry in plan:
                    if entry.action == "created":
                        services.provider_config_create(user=user, data=entry.data)
                    elif entry.action == "changed":
                        services.provider_config_update(config=entry.config, user=user, data=entry.data)
                if dry_run:
                    # Applied and rolled back: the report is exactly what a real run would do.
                    transaction.set_rollback(True)
        except SeedError as exc:
            lines = "\n".join(f"  {problem}" for problem in exc.problems)
            raise CommandError(f"{file}: nothing was saved.\n{lines}") from None
        except ValidationError as exc:
            # A model rule the serializer does not check (or a name taken meanwhile): nothing was saved either.
            raise CommandError(f"{file}: nothing was saved: {'; '.join(exc.messages)}") from None

        for entry in plan:
            if entry.action == "created":
                self.stdout.write(self.style.SUCCESS(f"created    {entry.display_name}"))
            elif entry.action == "changed":
                self.stdout.write(self.style.WARNING(f"changed    {entry.display_name}: {', '.join(entry.changed)}"))
            else:
                self.stdout.write(f"unchanged  {entry.display_name}")
        counts = {action: sum(entry.action == action for entry in plan) for action in ("created", "changed")}
        summary = (
            f"{counts['created']} created, {counts['changed']} changed, "
            f"{len(plan) - counts['created'] - counts['changed']} unchanged"
        )
        if dry_run:
            summary += " (dry run: nothing was saved)"
        self.stdout.write(summary + ".")
