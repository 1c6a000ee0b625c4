"""Deployment checks of our own (`manage.py check --deploy`)."""

from django.conf import settings
from django.core.checks import Tags, Warning, register

W001 = Warning(
    "PROXY_HEADERS is on and FORWARDED_ALLOW_IPS is unset, so uvicorn believes X-Forwarded-For only from 127.0.0.1.",
    hint=(
        "Behind a proxy on another host every client then has the proxy's address: they share one throttle at "
        "/api/v1/auth/token, and five wrong passwords from anyone lock the account out for everyone. Set "
        "FORWARDED_ALLOW_IPS to the addresses or networks of your proxies (e.g. 10.0.0.0/8), to 127.0.0.1 if the "
        "proxy runs on this host, or PROXY_HEADERS=0 when nothing stands in front of aditus."
    ),
    id="aditus.W001",
)


@register(Tags.security, deploy=True)
def check_trusted_proxies(app_configs, **kwargs):
    """Warn when a production deployment trusts forwarded headers from the default address only."""
    if settings.DEBUG or not settings.PROXY_HEADERS or settings.FORWARDED_ALLOW_IPS:
        return []
    return [W001]
