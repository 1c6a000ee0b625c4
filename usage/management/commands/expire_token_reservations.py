"""Charge and release token reservations left behind by crashed workers (the gateway also does this now and then)."""

from django.core.management.base import BaseCommand

from usage.services import reservations_expire


class Command(BaseCommand):
    help = (
        "Charge every expired token reservation as an 'unsettled' usage row costing what was reserved, and "
        "release it, exactly once; say how many there were."
    )

    def handle(self, *args, **options):
        charged = reservations_expire()
        self.stdout.write(f"Charged {charged} expired token reservation{'s' if charged != 1 else ''} as unsettled.")
