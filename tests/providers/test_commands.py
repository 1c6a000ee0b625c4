"""The operator commands: seed_providers, rotate_api_key, rotate_encryption_keys, test_providers."""

import io
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from providers import services
from providers.fields import Sealed
from providers.models import ProviderConfig

pytestmark = pytest.mark.django_db

EXAMPLES = Path(__file__).resolve().parents[2] / "providers" / "seed_examples"

GEMINI_KEY = "AIzaSyCommand-test-gemini-key-0001gm01"
ANTHROPIC_KEY = "sk-ant-command-test-claude-key-0002an02"
OPENAI_KEY = "sk-command-test-openai-key-0003oa03"
NEW_GEMINI_KEY = "AIzaSyCommand-test-gemini-key-0004gm04"
REVOKED_GEMINI_KEY = "AIzaSyCommand-revoked-gemini-key-0005"
SECRETS = [GEMINI_KEY, ANTHROPIC_KEY, OPENAI_KEY, NEW_GEMINI_KEY, REVOKED_GEMINI_KEY]


class Run:
    """One command's captured output, and the error it ended with, if any."""

    def __init__(self, *args, **options):
        self.out, self.err = io.StringIO(), io.StringIO()
        self.error: CommandError | None = None
        try:
            call_command(*args, stdout=self.out, stderr=self.err, **options)
        except CommandError as exc:
            self.error = exc

    @property
    def stdout(self) -> str:
        return self.out.getvalue()

    @property
    def stderr(self) -> str:
        return self.err.getvalue()

    @property
    def message(self) -> str:
        return str(self.error) if self.error else ""

    def ok(self) -> "Run":
        assert self.error is None, self.message
        return self

    def failed(self) -> "Run":
        assert self.error is not None, self.stdout
        return self


def assert_no_secret_anywhere(*texts: str) -> None:
    """No key, in full, appears in the given texts or in any audit entry."""
    audit = [f"{entry.object_repr} {entry.change_message}" for entry in LogEntry.objects.all()]
    for text in [*texts, *audit]:
        for secret in SECRETS:
            assert secret not in text


def stored_column(config: ProviderConfig) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM providers_providerconfig WHERE id = %s", [config.pk])
        return cursor.fetchone()[0]


def messages_for(config: ProviderConfig) -> list[str]:
    return list(
        LogEntry.objects.filter(object_id=str(config.pk)).order_by("pk").values_list("change_message", flat=True)
    )


@pytest.fixture
def keys_in_env(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)


@pytest.fixture
def seed_file(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "providers.yaml"
        path.write_text(text)
        return str(path)

    return write


def two_configs_yaml(fake_providers, *, gemini_extra: str = "", claude_extra: str = "") -> str:
    return f"""
providers:
  - display_name: Gemini Fast
    provider_type: gemini
    model_name: gemini-2.5-flash
    base_url: {fake_providers.gemini_base_url}
    api_key_env: GEMINI_API_KEY
    tasks: [extraction, image_validation]
    priority: 10
    daily_token_limit: 2000000
{gemini_extra}
  - display_name: Claude Writer
    provider_type: claude
    model_name: claude-sonnet-4-5
    base_url: {fake_providers.anthropic_base_url}
    api_key_env: ANTHROPIC_API_KEY
    tasks: [cv_drafting, cover_letter]
{claude_extra}
"""


@pytest.fixture
def gemini_config(fake_providers, superadmin) -> ProviderConfig:
    return services.provider_config_create(
        user=superadmin,
        data={
            "provider_type": "gemini",
            "display_name": "Gemini Fast",
            "model_name": "gemini-2.5-flash",
            "api_key": GEMINI_KEY,
            "base_url": fake_providers.gemini_base_url,
            "default_for_extraction": True,
        },
    )


@pytest.fixture
def claude_config(fake_providers, superadmin) -> ProviderConfig:
    return services.provider_config_create(
        user=superadmin,
        data={
            "provider_type": "claude",
            "display_name": "Claude Writer",
            "model_name": "claude-sonnet-4-5",
            "api_key": ANTHROPIC_KEY,
            "base_url": fake_providers.anthropic_base_url,
            "default_for_cv_drafting": True,
        },
    )


# --- seed_providers ---


def test_seeding_creates_each_config_with_its_key_from_the_environment_and_audits_it(
    fake_providers, superadmin, keys_in_env, seed_file
):
    run = Run("seed_providers", file=seed_file(two_configs_yaml(fake_providers))).ok()

    assert "created    Gemini Fast" in run.stdout and "created    Claude Writer" in run.stdout
    assert "2 created, 0 changed, 0 unchanged." in run.stdout
    gemini = ProviderConfig.objects.get(display_name="Gemini Fast")
    assert gemini.reveal_api_key() == GEMINI_KEY
    assert gemini.tasks == ["extraction", "image_validation"]
    assert (gemini.priority, gemini.daily_token_limit, gemini.created_by) == (10, 2_000_000, superadmin)
    claude = ProviderConfig.objects.get(display_name="Claude Writer")
    assert claude.reveal_api_key() == ANTHROPIC_KEY and claude.tasks == ["cv_drafting", "cover_letter"]
    assert LogEntry.objects.filter(action_flag=ADDITION, user=superadmin).count() == 2
    assert_no_secret_anywhere(run.stdout, run.stderr)


def test_seeding_the_same_file_again_changes_nothing(fake_providers, superadmin, keys_in_env, seed_file):
    path = seed_file(two_configs_yaml(fake_providers))
    Run("seed_providers", file=path).ok()
    entries = LogEntry.objects.count()
    updated_at = ProviderConfig.objects.get(display_name="Gemini Fast").updated_at

    run = Run("seed_providers", file=path).ok()

    assert "unchanged  Gemini Fast" in run.stdout and "unchanged  Claude Writer" in run.stdout
    assert "0 created, 0 changed, 2 unchanged." in run.stdout
    assert LogEntry.objects.count() == entries
    assert ProviderConfig.objects.get(display_name="Gemini Fast").updated_at == updated_at


def test_seeding_reports_and_audits_the_fields_it_changed(
    fake_providers, superadmin, keys_in_env, seed_file, monkeypatch
):
    Run("seed_providers", file=seed_file(two_configs_yaml(fake_providers))).ok()
    monkeypatch.setenv("GEMINI_API_KEY", NEW_GEMINI_KEY)
    changed = two_configs_yaml(fake_providers, gemini_extra="    weight: 3\n    is_active: false")
    changed = changed.replace("daily_token_limit: 2000000", "daily_token_limit: null")

    run = Run("seed_providers", file=seed_file(changed)).ok()

    assert "changed    Gemini Fast: is_active, weight, daily_token_limit, api_key" in run.stdout
    assert "unchanged  Claude Writer" in run.stdout
    gemini = ProviderConfig.objects.get(display_name="Gemini Fast")
    assert (gemini.weight, gemini.is_active, gemini.daily_token_limit) == (3, False, None)
    assert gemini.reveal_api_key() == NEW_GEMINI_KEY
    assert "Rotated the API key." in messages_for(gemini)
    assert_no_secret_anywhere(run.stdout, run.stderr)


def test_a_field_the_file_leaves_out_keeps_its_stored_value(fake_providers, superadmin, keys_in_env, seed_file):
    path = seed_file(two_configs_yaml(fake_providers))
    Run("seed_providers", file=path).ok()
    ProviderConfig.objects.filter(display_name="Claude Writer").update(monthly_token_limit=5_000)

    Run("seed_providers", file=path).ok()

    assert ProviderConfig.objects.get(display_name="Claude Writer").monthly_token_limit == 5_000


def test_a_key_written_in_the_file_is_refused_without_being_echoed(fake_providers, superadmin, seed_file):
    path = seed_file(
        f"""
providers:
  - display_name: Gemini Fast
    provider_type: gemini
    model_name: gemini-2.5-flash
    api_key: {GEMINI_KEY}
"""
    )
    run = Run("seed_providers", file=path).failed()

    assert "api_key: keys never go in the file" in run.message and "api_key_env" in run.message
    assert "nothing was saved" in run.message
    assert not ProviderConfig.objects.exists()
    assert_no_secret_anywhere(run.message, run.stdout, run.stderr)


def test_one_invalid_entry_saves_nothing_and_every_problem_is_listed(
    fake_providers, superadmin, keys_in_env, seed_file
):
    Run("seed_providers", file=seed_file(two_configs_yaml(fake_providers))).ok()
    entries = LogEntry.objects.count()
    path = seed_file(
        two_configs_yaml(fake_providers).replace("priority: 10", "priority: 99")
        + """
  - display_name: Broken
    provider_type: mistral
    api_key_env: GEMINI_API_KEY
    is_activ: false
    priority: -1
"""
    )

    run = Run("seed_providers", file=path).failed()

    assert "entry 3 (Broken): provider_type:" in run.message
    assert "entry 3 (Broken): model_name: This field is required." in run.message
    assert "entry 3 (Broken): priority:" in run.message
    assert ProviderConfig.objects.get(display_name="Gemini Fast").priority == 10
    assert not ProviderConfig.objects.filter(display_name="Broken").exists()
    assert LogEntry.objects.count() == entries


def test_a_misspelt_field_is_an_error_not_ignored(fake_providers, superadmin, keys_in_env, seed_file):
    run = Run("seed_providers", file=seed_file(two_configs_yaml(fake_providers, claude_extra="    is_activ: false")))

    assert "entry 2 (Claude Writer): is_activ: Unknown field." in run.failed().message
    assert not ProviderConfig.objects.exists()


def test_an_error_in_the_last_entry_rolls_back_the_entries_before_it(
    fake_providers, superadmin, keys_in_env, seed_file
):
    # The second entry is valid on its own but reuses the first's name: nothing at all is created.
    text = two_configs_yaml(fake_providers).replace("display_name: Claude Writer", "display_name: Gemini Fast")

    run = Run("seed_providers", file=seed_file(text)).failed()

    assert "entry 2 (Gemini Fast): display_name: another entry already has this name." in run.message
    assert not ProviderConfig.objects.exists() and not LogEntry.objects.exists()


def test_a_missing_environment_variable_is_named(fake_providers, superadmin, keys_in_env, seed_file, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")

    run = Run("seed_providers", file=seed_file(two_configs_yaml(fake_providers))).failed()

    assert "entry 2 (Claude Writer): api_key_env: the environment variable ANTHROPIC_API_KEY is not set." in (
        run.message
    )
    assert not ProviderConfig.objects.exists()


def test_an_entry_without_api_key_env_is_refused(fake_providers, superadmin, keys_in_env, seed_file):
    text = two_configs_yaml(fake_providers).replace("    api_key_env: ANTHROPIC_API_KEY\n", "")

    run = Run("seed_providers", file=seed_file(text)).failed()

    assert "entry 2 (Claude Writer): api_key_env: required" in run.message
    assert "This field is required" not in run.message  # the key's error is told once, against api_key_env


@pytest.mark.parametrize(
    ("tasks", "error"),
    [
        ("[extraction, poetry]", "tasks: unknown task(s) poetry"),
        ("everything", "tasks: must be `all` or a list of tasks"),
    ],
)
def test_unknown_tasks_are_refused(fake_providers, superadmin, keys_in_env, seed_file, tasks, error):
    text = two_configs_yaml(fake_providers).replace("[extraction, image_validation]", tasks)

    assert f"entry 1 (Gemini Fast): {error}" in Run("seed_providers", file=seed_file(text)).failed().message


def test_tasks_and_task_flags_together_are_refused(fake_providers, superadmin, keys_in_env, seed_file):
    text = two_configs_yaml(fake_providers, gemini_extra="    default_for_cv_drafting: true")

    run = Run("seed_providers", file=seed_file(text)).failed()

    assert "give either `tasks:` or the flags default_for_cv_drafting, not both" in run.message


def test_a_file_that_is_not_yaml_is_reported_with_its_line(superadmin, seed_file):
    run = Run("seed_providers", file=seed_file("providers:\n  - display_name: [unclosed\n")).failed()

    assert "is not valid YAML at line" in run.message and "nothing was saved" in run.message


@pytest.mark.parametrize("text", ["", "- a list\n", "providers: {}\n", "providers: []\n", "providers: []\nextra: 1\n"])
def test_a_file_without_a_providers_list_is_refused(superadmin, seed_file, text):
    assert "providers" in Run("seed_providers", file=seed_file(text)).failed().message


def test_a_file_that_does_not_exist_is_a_clear_error(superadmin, tmp_path):
    run = Run("seed_providers", file=str(tmp_path / "nope.yaml")).failed()

    assert "Cannot read" in run.message and "nope.yaml" in run.message


def test_a_dry_run_reports_what_it_would_do_and_saves_nothing(fake_providers, superadmin, keys_in_env, seed_file):
    run = Run("seed_providers", file=seed_file(two_configs_yaml(fake_providers)), dry_run=True).ok()

    assert "created    Gemini Fast" in run.stdout and "(dry run: nothing was saved)" in run.stdout
    assert not ProviderConfig.objects.exists() and not LogEntry.objects.exists()


def test_seeding_needs_as_when_there_are_several_superusers(
    fake_providers, superadmin, superuser_without_otp, keys_in_env, seed_file
):
    path = seed_file(two_configs_yaml(fake_providers))

    assert "--as" in Run("seed_providers", file=path).failed().message
    Run("seed_providers", "--as", "sam", file=path).ok()
    assert ProviderConfig.objects.get(display_name="Gemini Fast").created_by == superuser_without_otp


def test_as_must_name_a_superuser(fake_providers, superadmin, ordinary_user, keys_in_env, seed_file):
    run = Run("seed_providers", "--as", "olivia", file=seed_file(two_configs_yaml(fake_providers))).failed()

    assert "No active superuser named 'olivia'" in run.message
    assert not ProviderConfig.objects.exists()


def test_seeding_without_any_superuser_is_refused(db, keys_in_env, fake_providers, seed_file):
    run = Run("seed_providers", file=seed_file(two_configs_yaml(fake_providers))).failed()

    assert "no active superuser" in run.message


def test_the_single_gemini_example_loads(superadmin, keys_in_env):
    run = Run("seed_providers", file=str(EXAMPLES / "single_gemini.yaml")).ok()

    (config,) = ProviderConfig.objects.all()
    assert "1 created" in run.stdout
    assert (config.provider_type, config.tasks) == (
        "gemini",
        ["extraction", "image_validation", "cv_drafting", "cover_letter"],
    )
    assert (config.daily_token_limit, config.monthly_token_limit) == (2_000_000, 40_000_000)
    assert config.reveal_api_key() == GEMINI_KEY


def test_the_gemini_and_claude_example_loads(superadmin, keys_in_env):
    Run("seed_providers", file=str(EXAMPLES / "gemini_and_claude.yaml")).ok()

    assert [(c.provider_type, c.tasks) for c in ProviderConfig.objects.order_by("display_name")] == [
        ("claude", ["cv_drafting", "cover_letter"]),
        ("gemini", ["extraction", "image_validation"]),
    ]
    assert ProviderConfig.objects.get(provider_type="claude").reveal_api_key() == ANTHROPIC_KEY


def test_the_openai_with_gemini_fallback_example_loads(superadmin, keys_in_env):
    Run("seed_providers", file=str(EXAMPLES / "openai_with_gemini_fallback.yaml")).ok()

    configs = ProviderConfig.objects.serving("cv_drafting").order_by("priority", "-weight")
    serving = [(c.provider_type, c.priority, c.weight) for c in configs]
    assert serving == [("openai", 10, 80), ("openai", 10, 20), ("gemini", 20, 1)]
    assert all(len(c.tasks) == 4 for c in ProviderConfig.objects.all())


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda path: path.name)
def test_every_example_loads_twice_idempotently(superadmin, keys_in_env, example):
    Run("seed_providers", file=str(example)).ok()

    run = Run("seed_providers", file=str(example)).ok()

    assert " 0 created, 0 changed" in " " + run.stdout.splitlines()[-1]


# --- rotate_api_key ---


def test_rotating_from_stdin_tests_the_key_then_saves_and_audits_it(gemini_config, superadmin, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(NEW_GEMINI_KEY + "\n"))

    run = Run("rotate_api_key", "Gemini Fast", "--stdin").ok()

    gemini_config.refresh_from_db()
    assert gemini_config.reveal_api_key() == NEW_GEMINI_KEY
    assert "AIza…gm04" in run.stdout and "The key works" in run.stdout
    assert gemini_config.last_test_ok is True and gemini_config.key_last_four == "gm04"
    assert messages_for(gemini_config)[-3:] == [
        "Tested a new API key before rotating: ok.",
        '[{"changed": {"fields": ["API key"], "values": {}}}]',
        "Rotated the API key.",
    ]
    assert LogEntry.objects.filter(action_flag=CHANGE).latest("pk").user == superadmin
    assert_no_secret_anywhere(run.stdout, run.stderr)


def test_rotating_from_a_named_environment_variable_by_config_id(gemini_config, monkeypatch):
    monkeypatch.setenv("NEW_GEMINI_KEY", NEW_GEMINI_KEY)

    run = Run("rotate_api_key", str(gemini_config.pk), "--from-env", "NEW_GEMINI_KEY").ok()

    gemini_config.refresh_from_db()
    assert gemini_config.reveal_api_key() == NEW_GEMINI_KEY
    assert_no_secret_anywhere(run.stdout, run.stderr)


def test_a_key_the_provider_refuses_saves_nothing_and_exits_with_the_error(gemini_config, monkeypatch):
    before = stored_column(gemini_config)
    monkeypatch.setattr(sys, "stdin", io.StringIO(REVOKED_GEMINI_KEY))

    run = Run("rotate_api_key", "Gemini Fast", "--stdin").failed()

    assert "failed its test (authentication)" in run.message and "Nothing was saved" in run.message
    assert stored_column(gemini_config) == before
    assert messages_for(gemini_config)[-1] == "Tested a new API key before rotating: failed (authentication)."
    assert "Rotated the API key." not in messages_for(gemini_config)
    assert_no_secret_anywhere(run.message, run.stdout, run.stderr)


def test_no_test_saves_the_key_without_asking_the_provider(gemini_config, monkeypatch):
    # The fake refuses this key, so only skipping the test lets it through.
    monkeypatch.setenv("NEW_KEY", REVOKED_GEMINI_KEY)

    run = Run("rotate_api_key", "Gemini Fast", "--from-env", "NEW_KEY", "--no-test").ok()

    gemini_config.refresh_from_db()
    assert gemini_config.reveal_api_key() == REVOKED_GEMINI_KEY
    assert "not tested" in run.stdout
    assert not any("Tested a new API key" in message for message in messages_for(gemini_config))
    assert "Rotated the API key." in messages_for(gemini_config)


@pytest.mark.parametrize(
    ("stdin", "error"),
    [("", "Standard input held no key."), (f"{NEW_GEMINI_KEY}\n{GEMINI_KEY}\n", "exactly one key")],
)
def test_stdin_must_hold_exactly_one_key(gemini_config, monkeypatch, stdin, error):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))

    run = Run("rotate_api_key", "Gemini Fast", "--stdin").failed()

    assert error in run.message
    assert_no_secret_anywhere(run.message)


def test_an_unset_variable_is_named(gemini_config, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)

    assert (
        "NOT_SET_ANYWHERE is not set"
        in Run("rotate_api_key", "Gemini Fast", "--from-env", "NOT_SET_ANYWHERE").failed().message
    )


def test_the_key_already_stored_is_not_a_rotation(gemini_config, monkeypatch):
    monkeypatch.setenv("SAME", GEMINI_KEY)
    entries = LogEntry.objects.count()

    run = Run("rotate_api_key", "Gemini Fast", "--from-env", "SAME").failed()

    assert "already has" in run.message and LogEntry.objects.count() == entries


def test_an_unknown_config_is_a_clear_error(gemini_config, monkeypatch):
    monkeypatch.setenv("NEW", NEW_GEMINI_KEY)

    assert "No provider config has the id or display name 'Nope'" in (
        Run("rotate_api_key", "Nope", "--from-env", "NEW").failed().message
    )


def test_the_key_cannot_be_given_on_the_command_line_and_a_stray_one_is_not_echoed(gemini_config, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    run = Run("rotate_api_key", "Gemini Fast", "--stdin", NEW_GEMINI_KEY).failed()

    assert "never from the command line" in run.message
    assert_no_secret_anywhere(run.message, run.stdout, run.stderr)
    gemini_config.refresh_from_db()
    assert gemini_config.reveal_api_key() == GEMINI_KEY


# --- rotate_encryption_keys ---


@pytest.fixture
def key_a(settings):
    key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [key]
    return key


def make_configs(count: int, fake_providers) -> list[ProviderConfig]:
    configs = []
    for number in range(count):
        config = ProviderConfig(
            provider_type="gemini",
            display_name=f"Gemini {number}",
            model_name="gemini-2.5-flash",
            base_url=fake_providers.gemini_base_url,
        )
        config.set_api_key(f"AIzaSyRotation-test-key-{number:04d}-xyz")
        config.save()
        configs.append(config)
    return configs


def test_after_rotating_the_old_key_can_be_removed(settings, key_a, fake_providers):
    configs = make_configs(5, fake_providers)
    key_b = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [key_b, key_a]

    run = Run("rotate_encryption_keys", batch_size=2).ok()

    assert "providers.ProviderConfig.api_key: re-encrypted 5, already under the first key 0" in run.stdout
    assert "the other keys can now be removed" in run.stdout
    assert "5/5 (100%)" in run.stderr and "2/5" in run.stderr  # one progress line per batch off a terminal
    settings.FIELD_ENCRYPTION_KEYS = [key_b]
    for number, config in enumerate(configs):
        assert ProviderConfig.objects.get(pk=config.pk).reveal_api_key() == f"AIzaSyRotation-test-key-{number:04d}-xyz"
        assert Fernet(key_b).decrypt(stored_column(config).encode())
    assert_no_secret_anywhere(run.stdout, run.stderr)


def test_a_second_run_skips_values_already_under_the_first_key(settings, key_a, fake_providers):
    (config,) = make_configs(1, fake_providers)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), key_a]
    Run("rotate_encryption_keys").ok()
    ciphertext = stored_column(config)

    run = Run("rotate_encryption_keys").ok()

    assert "re-encrypted 0, already under the first key 1" in run.stdout
    assert stored_column(config) == ciphertext


def test_an_interrupted_run_is_finished_by_the_next(settings, key_a, fake_providers):
    configs = make_configs(3, fake_providers)
    key_b = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [key_b, key_a]
    (column,) = [c for c in services.encrypted_columns() if c.model is ProviderConfig]
    batches = services.encrypted_column_reencrypt(column=column, batch_size=1)
    next(batches)
    batches.close()  # stopped after the first batch, as Ctrl-C would

    run = Run("rotate_encryption_keys").ok()

    assert "re-encrypted 2, already under the first key 1" in run.stdout
    settings.FIELD_ENCRYPTION_KEYS = [key_b]
    assert all(ProviderConfig.objects.get(pk=c.pk).api_key.is_current() for c in configs)


def test_a_value_saved_meanwhile_is_not_overwritten(settings, key_a, fake_providers, monkeypatch):
    (config,) = make_configs(1, fake_providers)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), key_a]
    rotated = Sealed.rotated

    def rotated_while_an_admin_saves_a_new_key(sealed):
        fresh = rotated(sealed)
        # Another process saves a new key between our read and our write.
        other = ProviderConfig.objects.get(pk=config.pk)
        other.set_api_key(NEW_GEMINI_KEY)
        other.save(update_fields=["api_key"])
        return fresh

    monkeypatch.setattr(Sealed, "rotated", rotated_while_an_admin_saves_a_new_key)

    run = Run("rotate_encryption_keys").ok()

    assert "changed by someone else meanwhile 1" in run.stdout and "run the command again" in run.stdout
    assert ProviderConfig.objects.get(pk=config.pk).reveal_api_key() == NEW_GEMINI_KEY


def test_a_value_no_key_decrypts_is_reported_left_alone_and_fails_the_run(settings, key_a, fake_providers):
    readable, lost = make_configs(2, fake_providers)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    lost.set_api_key("AIzaSyEncrypted-under-a-lost-key-0000")
    lost.save(update_fields=["api_key"])
    lost_ciphertext = stored_column(lost)
    key_b = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [key_b, key_a]

    run = Run("rotate_encryption_keys").failed()

    assert f"providers.ProviderConfig.api_key id {lost.pk} (Gemini 1)" in run.message
    assert "1 value(s) cannot be decrypted" in run.message and "Do not remove any key yet" in run.message
    assert "re-encrypted 1" in run.stdout
    assert stored_column(lost) == lost_ciphertext
    assert Fernet(key_b).decrypt(stored_column(readable).encode())


def test_a_dry_run_counts_and_writes_nothing(settings, key_a, fake_providers):
    (config,) = make_configs(1, fake_providers)
    ciphertext = stored_column(config)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), key_a]

    run = Run("rotate_encryption_keys", dry_run=True).ok()

    assert "would re-encrypt 1" in run.stdout and "Dry run: nothing was written." in run.stdout
    assert stored_column(config) == ciphertext


def test_a_batch_size_below_one_is_refused(db):
    assert "must be 1 or more" in Run("rotate_encryption_keys", "--batch-size", "0").failed().message


def test_rotating_encryption_keys_writes_no_audit_entry(settings, key_a, fake_providers):
    make_configs(2, fake_providers)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), key_a]

    Run("rotate_encryption_keys").ok()

    assert not LogEntry.objects.exists()


# --- test_providers ---


def test_testing_every_active_config_prints_a_table_and_records_each_result(gemini_config, claude_config, superadmin):
    run = Run("test_providers").ok()

    header, *rows = run.stdout.splitlines()[:3]
    assert header.split() == ["NAME", "TYPE", "MODEL", "RESULT", "ERROR", "TYPE", "LATENCY", "MS", "MESSAGE"]
    assert any(row.startswith("Gemini Fast") and " gemini " in row and " ok " in row for row in rows)
    assert any(row.startswith("Claude Writer") and "claude-sonnet-4-5" in row for row in rows)
    assert "All 2 provider config(s) passed." in run.stdout
    for config in (gemini_config, claude_config):
        config.refresh_from_db()
        assert config.last_test_ok is True and config.last_tested_at is not None
        assert messages_for(config)[-1] == "Tested credentials: ok."
    assert_no_secret_anywhere(run.stdout, run.stderr)


def test_a_failing_config_fails_the_run_with_its_error_type(gemini_config, fake_providers, superadmin):
    broken = services.provider_config_create(
        user=superadmin,
        data={
            "provider_type": "gemini",
            "display_name": "Gemini Revoked",
            "model_name": "gemini-2.5-flash",
            "api_key": REVOKED_GEMINI_KEY,
            "base_url": fake_providers.gemini_base_url,
        },
    )

    run = Run("test_providers").failed()

    assert "1 of 2 provider config(s) failed the test." in run.message
    (row,) = [line for line in run.stdout.splitlines() if line.startswith("Gemini Revoked")]
    assert "FAILED" in row and "authentication" in row
    broken.refresh_from_db()
    assert broken.last_test_ok is False and broken.last_test_error.startswith("authentication")
    assert_no_secret_anywhere(run.stdout, run.stderr, run.message)


def test_an_unknown_model_is_reported_as_such(fake_providers, superadmin):
    services.provider_config_create(
        user=superadmin,
        data={
            "provider_type": "openai",
            "display_name": "OpenAI Imaginary",
            "model_name": "gpt-imaginary",
            "api_key": OPENAI_KEY,
            "base_url": fake_providers.openai_base_url,
        },
    )

    run = Run("test_providers").failed()

    assert "model_not_found" in run.stdout


def test_inactive_configs_are_tested_only_with_all(gemini_config, claude_config):
    ProviderConfig.objects.filter(pk=claude_config.pk).update(is_active=False)

    assert "Claude Writer" not in Run("test_providers").ok().stdout
    assert "Claude Writer" in Run("test_providers", "--all").ok().stdout


def test_config_tests_only_the_named_configs(gemini_config, claude_config):
    run = Run("test_providers", "--config", "Claude Writer").ok()

    assert "Claude Writer" in run.stdout and "Gemini Fast" not in run.stdout
    assert "All 1 provider config(s) passed." in run.stdout
    assert "No provider config has the id or display name 'Nope'" in (
        Run("test_providers", "--config", "Nope").failed().message
    )


def test_a_key_no_encryption_key_reads_is_a_failed_row_not_a_crash(gemini_config, settings):
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    run = Run("test_providers").failed()

    (row,) = [line for line in run.stdout.splitlines() if line.startswith("Gemini Fast")]
    assert "FAILED" in row and "decryption" in row


def test_having_nothing_to_test_fails(superadmin):
    assert "no active provider configs" in Run("test_providers").failed().message


def test_testing_needs_an_acting_superuser(gemini_config, superuser_without_otp):
    assert "--as" in Run("test_providers").failed().message
    assert "Gemini Fast" in Run("test_providers", "--as", "ada").ok().stdout


def test_seeded_configs_pass_test_providers(fake_providers, superadmin, keys_in_env, seed_file):
    Run("seed_providers", file=seed_file(two_configs_yaml(fake_providers))).ok()

    run = Run("test_providers").ok()

    assert "All 2 provider config(s) passed." in run.stdout


# --- every command ---


@pytest.mark.parametrize("command", ["seed_providers", "rotate_api_key", "rotate_encryption_keys", "test_providers"])
def test_every_command_explains_itself_in_help(command, capsys):
    with pytest.raises(SystemExit):
        call_command(command, "--help")

    help_text = capsys.readouterr().out
    assert f"manage.py {command}" in help_text or command in help_text
    assert len(help_text.split("\n\n")[1]) > 80  # a real description, not just the usage line
