"""Test provider configs' credentials against their providers and print a table of the results."""

import time

from django.core.management.base import BaseCommand, CommandError

from providers import services
from providers.models import ProviderConfig

COLUMNS = ("NAME", "TYPE", "MODEL", "RESULT", "ERROR TYPE", "LATENCY MS", "MESSAGE")
MESSAGE_WIDTH = 120


class Command(BaseCommand):
    help = (
        "Test the credentials of every active provider config (the provider is asked for the configured model; no "
        "tokens are spent), print a table, record each result on its config and in the audit log, and exit "
        "non-zero if any test fails."
    )

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--all", action="store_true", help="Test inactive configs too.")
        which.add_argument(
            "--config",
            action="append",
            metavar="NAME",
            help="Test only this config (id or display name), active or not; repeat for several.",
        )
        parser.add_argument(
            "--as",
            dest="as_user",
            metavar="USERNAME",
            help="Superuser recorded in the audit log (default: the only superuser, if there is exactly one).",
        )

    def handle(self, *args, all: bool, config: list[str] | None, as_user: str | None, **options):
        try:
            user = services.acting_user_get(username=as_user)
        except services.ActingUserError as exc:
            raise CommandError(str(exc)) from None
        configs = self._configs(include_inactive=all, references=config or [])

        rows = [self._test(target, user) for target in configs]
        self._print_table(rows)
        failed = sum(row[3] != "ok" for row in rows)
        if failed:
            raise CommandError(f"{failed} of {len(rows)} provider config(s) failed the test.")
        self.stdout.write(self.style.SUCCESS(f"All {len(rows)} provider config(s) passed."))

    def _configs(self, *, include_inactive: bool, references: list[str]) -> list[ProviderConfig]:
        if references:
            found = []
            for reference in references:
                match = ProviderConfig.objects.filter(pk=int(reference)).first() if reference.isdigit() else None
                match = match or ProviderConfig.objects.filter(display_name=reference).first()
                if match is None:
                    raise CommandError(f"No provider config has the id or display name {reference!r}.")
                if match not in found:
                    found.append(match)
            return found
        configs = list(ProviderConfig.objects.all() if include_inactive else ProviderConfig.objects.active())
        if not configs:
            # A health check that tested nothing must not pass.
            raise CommandError(
                "There are no provider configs to test."
                if include_inactive
                else "There are no active provider configs to test (--all includes inactive ones)."
            )
        return configs

    def _test(self, config: ProviderConfig, user) -> tuple[str, ...]:
        started = time.monotonic()
        # A stored key that cannot be decrypted comes back as a failed test of its own error type.
        result = services.provider_config_test(config=config, user=user)
        ok, error_type, message = result.ok, result.error_type or "", result.message
        latency_ms = round((time.monotonic() - started) * 1000)
        if len(message) > MESSAGE_WIDTH:
            message = message[: MESSAGE_WIDTH - 1] + "…"
        return (
            config.display_name,
            config.provider_type,
            config.model_name,
            "ok" if ok else "FAILED",
            error_type,
            str(latency_ms),
            message,
        )

    def _print_table(self, rows: list[tuple[str, ...]]) -> None:
        widths = [max(len(row[index]) for row in [COLUMNS, *rows]) for index in range(len(COLUMNS))]

        def line(cells: tuple[str, ...]) -> str:
            padded = [
                # Latency reads best right-aligned; the message is last and needs no padding.
                cell.rjust(width) if index == 5 else (cell if index == len(cells) - 1 else cell.ljust(width))
                for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(padded).rstrip()

        self.stdout.write(line(COLUMNS))
        for row in rows:
            style = self.style.SUCCESS if row[3] == "ok" else self.style.ERROR
            self.stdout.write(style(line(row)))
