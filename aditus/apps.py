from django.apps import AppConfig


class AditusConfig(AppConfig):
    name = "aditus"
    verbose_name = "Access"
