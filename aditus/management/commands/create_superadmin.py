"""Create a super-admin (a superuser with a confirmed TOTP device) and show how to enrol the authenticator."""

import getpass
import io
import os
import sys

import qrcode
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from aditus.services import api_tokens_revoke_for_user

DEVICE_NAME = "Authenticator app"
# RFC 4226 asks for at least 128 bits; django-otp stores at most 40 bytes.
MIN_KEY_BYTES, MAX_KEY_BYTES = 16, 40
NO_TERMINAL = (
    "There is no terminal to prompt for the password. Put it in an environment variable and name that variable "
    "with --password-env, e.g. ADITUS_ADMIN_PASSWORD=... manage.py create_superadmin --username U "
    "--password-env ADITUS_ADMIN_PASSWORD"
)


class Command(BaseCommand):
    help = (
        "Create a super-admin with a confirmed TOTP device and print the otpauth:// URI and a QR code "
        "for an authenticator app. With --update, an existing user is made a super-admin, gets the new "
        "password and a new TOTP device in place of its old ones, and its API tokens are revoked. The "
        "password is read from the environment variable named by --password-env, or prompted for; never "
        "from the command line."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", required=True)
        parser.add_argument("--email", help="Set the user's email address.")
        parser.add_argument(
            "--password-env",
            metavar="VAR",
            help="Read the password from environment variable VAR instead of prompting for it.",
        )
        parser.add_argument(
            "--update",
            action="store_true",
            help="If the user exists, reset it: password, flags, TOTP device; its tokens are revoked.",
        )
        parser.add_argument(
            "--totp-secret-hex",
            metavar="HEX",
            help=(
                f"FOR DEMOS ONLY: use this TOTP key ({MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, hex-encoded) "
                "instead of a random one, so the demo's authenticator is known in advance. A key on the "
                "command line ends up in shell history and process lists; never use this for a real account."
            ),
        )

    def handle(self, *args, username, email, password_env, update, totp_secret_hex, **options):
        key = self._totp_key(totp_secret_hex)
        user_model = get_user_model()
        user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()
        if user is not None and not update:
            raise CommandError(f"User {username!r} already exists; pass --update to reset it.")
        password = self._read_password(password_env)

        created = user is None
        if created:
            user = user_model(**{user_model.USERNAME_FIELD: username})
        if email is not None:
            user.email = user_model._default_manager.normalize_email(email)
        user.is_active = user.is_staff = user.is_superuser = True
        try:
            user.full_clean(exclude=["password"])
            validate_password(password, user)
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None

        with transaction.atomic():
            # Revoked here to count them; saving the new password would revoke them anyway (aditus.signals).
            revoked = api_tokens_revoke_for_user(user=user) if user.pk else 0
            user.set_password(password)
            user.save()
            _, deleted = TOTPDevice.objects.filter(user=user).delete()
            replaced = deleted.get(TOTPDevice._meta.label, 0)
            device = TOTPDevice.objects.create(
                user=user, name=DEVICE_NAME, confirmed=True, **({"key": key} if key else {})
            )

        if created:
            self.stdout.write(self.style.SUCCESS(f"Created super-admin {username!r} with a confirmed TOTP device."))
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Updated super-admin {username!r}: password set, "
                    f"{replaced} old TOTP device(s) replaced, {revoked} API token(s) revoked."
                )
            )
        if key:
            self.stdout.write(self.style.WARNING("The TOTP key was given with --totp-secret-hex: demo use only."))
        self._print_enrolment(device.config_url)

    def _totp_key(self, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise CommandError("--totp-secret-hex must be hexadecimal digits.") from None
        if not MIN_KEY_BYTES <= len(raw) <= MAX_KEY_BYTES:
            raise CommandError(
                f"--totp-secret-hex must encode {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes "
                f"({2 * MIN_KEY_BYTES} to {2 * MAX_KEY_BYTES} hex digits)."
            )
        return raw.hex()

    def _read_password(self, env_var: str | None) -> str:
        if env_var:
            password = os.environ.get(env_var, "")
            if not password:
                raise CommandError(f"Environment variable {env_var} is not set or is empty.")
            return password
        # Without a terminal (a script, CI, `docker run` without -t) getpass would read stdin, echo, and end in an
        # EOFError traceback: say what to do instead.
        if not sys.stdin.isatty():
            raise CommandError(NO_TERMINAL)
        try:
            password = getpass.getpass("Password: ")
            if not password:
                raise CommandError("The password must not be empty.")
            if getpass.getpass("Password (again): ") != password:
                raise CommandError("The passwords do not match.")
        except EOFError:
            raise CommandError(NO_TERMINAL) from None
        return password

    def _print_enrolment(self, uri: str) -> None:
        self.stdout.write(
            "\nAdd the account to an authenticator app: scan the QR code or enter the URI.\n"
            "Both contain the TOTP secret; keep them out of tickets, chats and logs.\n\n"
        )
        self.stdout.write(uri)
        code = qrcode.QRCode(border=1)
        code.add_data(uri)
        drawing = io.StringIO()
        code.print_ascii(out=drawing, invert=True)
        encoding = getattr(self.stdout, "encoding", None) or "utf-8"
        try:
            drawing.getvalue().encode(encoding)
        except UnicodeEncodeError:
            self.stdout.write(f"(No QR code: this terminal's encoding, {encoding}, has no block characters.)")
            return
        self.stdout.write("")
        self.stdout.write(drawing.getvalue(), ending="")
