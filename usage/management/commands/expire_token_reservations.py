"""Release token reservations left behind by crashed workers (the gateway also does this now and then)."""

from django.core.management.base import BaseCommand

from usage.services import reservations_expire


class Command(BaseCommand):
    help = "Release expired token reservations, each exactly once, and say how many there were."

    def handle(self, *args, **options):
        released = reservations_expire()
        self.stdout.write(f"Released {released} expired token reservation{'s' if released != 1 else ''}.")
