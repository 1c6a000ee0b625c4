# Issue 14: the audit page (a proxy of LogEntry, no table) and the provider types spelt as people read them.

import django.contrib.admin.models
import providers.clients.base
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('admin', '0003_logentry_add_action_flag_choices'),
        ('providers', '0002_model_name_printable'),
    ]

    operations = [
        migrations.CreateModel(
            name='AuditEntry',
            fields=[
            ],
            options={
                'verbose_name': 'audit entry',
                'verbose_name_plural': 'audit log entries',
                'proxy': True,
                'indexes': [],
                'constraints': [],
            },
            bases=('admin.logentry',),
            managers=[
                ('objects', django.contrib.admin.models.LogEntryManager()),
            ],
        ),
        migrations.AlterField(
            model_name='providerconfig',
            name='provider_type',
            field=models.CharField(choices=providers.clients.base.provider_type_choices, max_length=16),
        ),
    ]
