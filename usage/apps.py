from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"

    def ready(self):
        from django.db.models.signals import post_migrate, pre_migrate

        from usage.seed_views import create_after_migrating, drop_before_migrating

        # The seed's ai_provider_usage_logs view: out of the way while migrations run, back after (usage.seed_views).
        pre_migrate.connect(drop_before_migrating, sender=self, dispatch_uid="usage.seed_views.drop")
        post_migrate.connect(create_after_migrating, sender=self, dispatch_uid="usage.seed_views.create")
