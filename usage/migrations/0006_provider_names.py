# Issue 14: the provider types spelt as people read them (choices only; no change to the column).

import providers.clients.base
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('usage', '0005_local_errors'),
    ]

    operations = [
        migrations.AlterField(
            model_name='usagerecord',
            name='provider_type',
            field=models.CharField(choices=providers.clients.base.provider_type_choices, max_length=16),
        ),
    ]
