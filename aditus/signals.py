"""Receivers that keep bearer tokens in step with their user's account (connected in AditusConfig.ready)."""

from __future__ import annotations

from aditus.services import api_tokens_revoke_for_user


def revoke_tokens_when_the_password_changes(sender, instance, raw: bool = False, update_fields=None, **kwargs) -> None:
    """pre_save of the user model: a new password hash revokes the user's bearer tokens, however it was set (the
    admin, `manage.py changepassword`, `set_password` in a shell), as a new password ends other admin sessions.

    One query per user save that can change the password; `last_login` updates (every login) name their fields and
    cost nothing. A compromise: Django re-hashing a password on login after its hasher changed (an upgrade that
    raises the iterations) counts as a change too, and revokes that user's tokens once.
    """
    if raw or instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    stored = sender._default_manager.filter(pk=instance.pk).values_list("password", flat=True).first()
    if stored is not None and stored != instance.password:
        api_tokens_revoke_for_user(user=instance)
