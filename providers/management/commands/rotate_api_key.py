"""Replace one provider config's API key, read from standard input or an environment variable, never argv."""

import getpass
import os
import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from providers import services
from providers.fields import DecryptionError
from providers.models import ProviderConfig
from providers.serializers import ProviderConfigInputSerializer


class Command(BaseCommand):
    help = (
        "Replace a provider config's API key. The new key is read from standard input or from a named environment "
        "variable (never from the command line, where ps and shell history would show it), tested against the "
        "provider before it is saved unless --no-test, and the rotation is recorded in the audit log."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        report = parser.error

        def error(message: str):
            # argparse would repeat a stray argument, which may well be a key pasted in the wrong place.
            if message.startswith("unrecognized arguments"):
                message = (
                    "unexpected extra arguments (not shown, in case one is a key): the new key is read from "
                    "--stdin or --from-env VAR, never from the command line"
                )
            report(message)

        parser.error = error
        return parser

    def add_arguments(self, parser):
        parser.add_argument("config", help="The config's id or display name.")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--from-env", metavar="VAR", help="Read the new key from the environment variable VAR (its name)."
        )
        source.add_argument(
            "--stdin",
            action="store_true",
            help="Read the new key from standard input (on a terminal: prompted, not echoed).",
        )
        parser.add_argument(
            "--no-test", action="store_true", help="Save the key without testing it against the provider first."
        )
        parser.add_argument(
            "--as",
            dest="as_user",
            metavar="USERNAME",
            help="Superuser recorded in the audit log (default: the only superuser, if there is exactly one).",
        )

    def handle(self, *args, config: str, from_env: str | None, stdin: bool, no_test: bool, as_user, **options):
        try:
            user = services.acting_user_get(username=as_user)
        except services.ActingUserError as exc:
            raise CommandError(str(exc)) from None
        target = self._config(config)
        api_key = self._validated(target, self._read_from_env(from_env) if from_env else self._read_from_stdin())
        if self._is_stored_key(target, api_key):
            raise CommandError(f"That is the key {target} already has; nothing changed.")

        try:
            if no_test:
                services.provider_config_rotate_key(config=target, user=user, api_key=api_key)
                tested = "not tested (--no-test)"
            else:
                result = services.provider_config_rotate_key_tested(config=target, user=user, api_key=api_key)
                if not result.ok:
                    raise CommandError(
                        f"The new key failed its test ({result.error_type}): {result.message} "
                        f"Nothing was saved; {target} keeps its current key."
                    )
                tested = f"tested: {result.message}"
        except ValidationError as exc:
            raise CommandError(f"{target} cannot be saved: {'; '.join(exc.messages)}") from None
        self.stdout.write(
            self.style.SUCCESS(f"Rotated the API key of {target} (id {target.pk}): now {target.masked_key}; {tested}")
        )

    def _config(self, reference: str) -> ProviderConfig:
        configs = ProviderConfig.objects.all()
        config = configs.filter(pk=int(reference)).first() if reference.isdigit() else None
        config = config or configs.filter(display_name=reference).first()
        if config is None:
            raise CommandError(f"No provider config has the id or display name {reference!r}.")
        return config

    def _read_from_env(self, name: str) -> str:
        if name not in os.environ:
            raise CommandError(f"The environment variable {name} is not set.")
        value = os.environ[name].strip()
        if not value:
            raise CommandError(f"The environment variable {name} is empty.")
        return value

    def _read_from_stdin(self) -> str:
        tty = sys.stdin.isatty()
        value = (getpass.getpass("New API key (not echoed): ") if tty else sys.stdin.read()).strip()
        if not value:
            raise CommandError("Standard input held no key.")
        if len(value.split()) > 1:
            raise CommandError("Standard input must hold exactly one key, and nothing else.")
        return value

    def _validated(self, config: ProviderConfig, api_key: str) -> str:
        """Apply the API's rules for a key (length, whitespace) so the command accepts what the API accepts."""
        serializer = ProviderConfigInputSerializer(config, data={"api_key": api_key}, partial=True)
        if not serializer.is_valid():
            raise CommandError(f"The new key is refused: {' '.join(serializer.errors.get('api_key', []))}")
        return serializer.validated_data["api_key"]

    def _is_stored_key(self, config: ProviderConfig, api_key: str) -> bool:
        try:
            return config.reveal_api_key() == api_key
        except DecryptionError:
            return False  # replacing a key no encryption key reads is the fix for it
