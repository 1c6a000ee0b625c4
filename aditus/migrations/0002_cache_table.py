from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    """The database cache's table (settings.CACHES without CACHE_URL): throttle counters every process shares.
    Nothing to do when the cache is Redis; deploy/entrypoint.sh migrate runs createcachetable again, for a
    deployment that moves from Redis to the database later."""
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("aditus", "0001_initial")]

    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop, elidable=True)]
