"""The database cache's table (request budgets shared by workers live there when no Redis is
configured), so a database prepared with `migrate` alone serves requests and runs workers."""
from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    # Creates the table of every DatabaseCache in CACHES on this database; nothing with Redis.
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("integrations", "0002_halo_shape")]

    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop)]
