"""Settings: file + .env + environment + flags merged once; clear one-line config errors."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from app.settings import ConfigError, load_settings, password_warning

DESIGN_EXAMPLE = """
[server]
host = "127.0.0.1"
port = 8000
anthropic_port = 8001
database_url = "sqlite:///bridgekeeper.db"
admin_password = "..."
default_upstream = "local"
max_body_mb = 32
grace_seconds = 30

[[upstreams]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:11434/v1"
keys = ["sk-one", "env:SECOND_KEY"]
rotation = "ordered"
timeout = 60
reasoning = "replay"
top_k = false
chat_template_thinking = true
tokenize_url = "http://127.0.0.1:8080/tokenize"
max_tokens_field = "max_tokens"

[[models]]
name = "claude-3-haiku-20240307"
upstream = "local"
target = "qwen2.5:7b"
max_tokens = 4096
temperature = 0.1
context_window = 32768
fallbacks = ["claude-3-5-haiku"]
prompt_cache = true

[[keys]]
name = "alice"
key = "bk-alice-0000000000"
rpm = 60
tpm = 100000
models = ["claude-*"]
expires = "2030-01-31"
"""


def write(tmp_path: Path, text: str, name: str = "bk.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_design_example_parses(tmp_path: Path) -> None:
    path = write(tmp_path, DESIGN_EXAMPLE)
    s = load_settings(config_path=str(path), environ={"SECOND_KEY": "sk-two"}, cwd=tmp_path)
    assert (s.host, s.port, s.anthropic_port, s.default_upstream) == (
        "127.0.0.1",
        8000,
        8001,
        "local",
    )
    assert s.max_body_bytes == 32 * 1024 * 1024 and s.grace_seconds == 30
    (up,) = s.upstreams
    assert up.keys == ("sk-one", "sk-two") and up.reasoning == "replay"
    assert up.tokenize_url == "http://127.0.0.1:8080/tokenize"
    assert (up.top_k, up.chat_template_thinking) == (False, True)
    (model,) = s.models
    assert (model.target, model.max_tokens, model.context_window, model.fallbacks) == (
        "qwen2.5:7b",
        4096,
        32768,
        ("claude-3-5-haiku",),
    )
    (key,) = s.keys
    assert (key.rpm, key.tpm, key.models, key.expires) == (
        60,
        100000,
        ("claude-*",),
        date(2030, 1, 31),
    )
    assert not s.echo_default


def test_precedence_flags_over_env_over_dotenv_over_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[server]\nport = 1111\nhost = "10.0.0.1"\ndatabase_url = "sqlite:///file.db"\n'
    )
    (tmp_path / ".env").write_text(
        'BRIDGEKEEPER_PORT=2222\nBRIDGEKEEPER_HOST="0.0.0.0"\n# comment\n'
    )
    s = load_settings(config_path=str(path), environ={"BRIDGEKEEPER_PORT": "3333"}, cwd=tmp_path)
    assert (s.port, s.host, s.database_url) == (3333, "0.0.0.0", "sqlite:///file.db")
    s = load_settings(
        config_path=str(path),
        environ={"BRIDGEKEEPER_PORT": "3333"},
        cwd=tmp_path,
        flags={"port": 4444, "database_url": "sqlite:///flag.db"},
    )
    assert (s.port, s.database_url) == (4444, "sqlite:///flag.db")


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 1234\n")
    s = load_settings(environ={"BRIDGEKEEPER_CONFIG": str(path)}, cwd=tmp_path)
    assert s.port == 1234 and s.config_path == str(path)


def test_nothing_configured_means_echo(tmp_path: Path) -> None:
    s = load_settings(environ={}, cwd=tmp_path)
    assert s.echo_default and s.default_upstream == "echo"
    assert [(u.name, u.kind) for u in s.upstreams] == [("echo", "echo")]


def test_a_proxy_key_in_the_client_variables_is_not_an_upstream_key(tmp_path: Path) -> None:
    """The shell that runs Claude Code or the SDKs through the gateway holds the gateway's
    own key in ANTHROPIC_API_KEY / OPENAI_API_KEY; a gateway started there keeps echo."""
    environ = {"ANTHROPIC_API_KEY": "bk-mine-0123456789", "OPENAI_API_KEY_1": "bk-mine-2"}
    s = load_settings(environ=environ, cwd=tmp_path)
    assert s.echo_default and [u.name for u in s.upstreams] == ["echo"]
    environ["OPENAI_API_KEY_2"] = "sk-real-openai-key"
    s = load_settings(environ=environ, cwd=tmp_path)
    assert [(u.name, u.keys) for u in s.upstreams] == [("openai", ("sk-real-openai-key",))]


def test_compatibility_variables(tmp_path: Path) -> None:
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-a",
        "ANTHROPIC_API_KEY_2": "sk-ant-c",
        "ANTHROPIC_API_KEY_1": "sk-ant-b",
        "ANTHROPIC_BASE_URL": "http://anthropic.local/",
        "OPENAI_API_KEY_1": "sk-oa",
        "OPENAI_BASE_URL": "http://vllm.local/v1",
        "CLAUDE_PROXY_API_KEY": "bk-compat-key-000",
        "ANTHROPIC_MODEL": "qwen3",
        "MODEL_TEMPERATURE": "0.2",
        "MAX_TOKENS": "8192",
        "REQUEST_TIMEOUT": "90",
        "TOKENS_PER_MINUTE": "50000",
        "REQUESTS_PER_MINUTE": "30",
    }
    s = load_settings(environ=env, cwd=tmp_path)
    anthropic, openai = s.upstreams
    assert (anthropic.name, anthropic.base_url, anthropic.keys) == (
        "anthropic",
        "http://anthropic.local",
        ("sk-ant-a", "sk-ant-b", "sk-ant-c"),
    )
    assert (openai.base_url, openai.keys, openai.timeout) == (
        "http://vllm.local/v1",
        ("sk-oa",),
        90.0,
    )
    assert s.proxy_key == "bk-compat-key-000"
    assert (s.default_model, s.default_temperature, s.default_max_tokens) == ("qwen3", 0.2, 8192)
    assert (s.default_tpm, s.default_rpm, s.request_timeout) == (50000, 30, 90.0)
    assert [m.name for m in s.models][:1] == ["claude-*"]


def test_anthropic_alone_takes_every_model_name(tmp_path: Path) -> None:
    """The OpenAI-to-Claude proxies' setup: Anthropic keys and ANTHROPIC_MODEL, no OpenAI
    upstream. Names no route matches (``gpt-4``) go to Anthropic as ANTHROPIC_MODEL."""
    env = {"ANTHROPIC_API_KEY": "sk-ant-a", "ANTHROPIC_MODEL": "claude-sonnet-4-5"}
    s = load_settings(environ=env, cwd=tmp_path)
    assert [(u.name, u.keys) for u in s.upstreams] == [("anthropic", ("sk-ant-a",))]
    assert (s.default_upstream, s.default_model) == ("anthropic", "claude-sonnet-4-5")
    both = load_settings(environ=env | {"OPENAI_API_KEY": "sk-oa"}, cwd=tmp_path)
    # Beside OpenAI, ANTHROPIC_MODEL still names the model other names are for (it did
    # nothing there); without it two backends leave unknown names unguessed.
    assert (both.default_upstream, both.default_model) == ("anthropic", "claude-sonnet-4-5")
    unnamed = {"ANTHROPIC_API_KEY": "sk-ant-a", "OPENAI_API_KEY": "sk-oa"}
    assert load_settings(environ=unnamed, cwd=tmp_path).default_upstream is None


def test_a_base_url_alone_bootstraps_a_keyless_upstream(tmp_path: Path) -> None:
    env = {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9100", "OPENAI_BASE_URL": "http://h:11434/v1"}
    s = load_settings(environ=env, cwd=tmp_path)
    assert [(u.name, u.base_url, u.keys) for u in s.upstreams] == [
        ("anthropic", "http://127.0.0.1:9100", ()),
        ("openai", "http://h:11434/v1", ()),
    ]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:8000/", "http://0.0.0.0:8000/anthropic"]
)
def test_a_base_url_pointing_at_the_gateway_itself_is_ignored(tmp_path: Path, url: str) -> None:
    """Claude Code's shell exports ANTHROPIC_BASE_URL at the gateway: not an upstream."""
    s = load_settings(environ={"ANTHROPIC_BASE_URL": url}, cwd=tmp_path)
    assert [u.name for u in s.upstreams] == ["echo"]
    other_port = load_settings(
        environ={"ANTHROPIC_BASE_URL": url, "BRIDGEKEEPER_PORT": "9000"}, cwd=tmp_path
    )
    assert [u.name for u in other_port.upstreams] == ["anthropic"]


def test_config_keys_of_any_length_and_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "bk.toml").write_text(
        '[[keys]]\nname = "alice"\nkey = "bk-..."\n[[keys]]\nname = "bob"\nkey = "env:BOB"\n'
    )
    s = load_settings(
        environ={"BRIDGEKEEPER_CONFIG": str(tmp_path / "bk.toml"), "BOB": "bk-b"}, cwd=tmp_path
    )
    assert [(k.name, k.key) for k in s.keys] == [("alice", "bk-..."), ("bob", "bk-b")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server\nport = 1", "not valid TOML"),
        ('[[upstreams]]\nname = "x"\nkind = "grpc"\n', "upstreams[0] (x): unknown kind 'grpc'"),
        ('[[upstreams]]\nkind = "openai"\n', "upstreams[0]: 'name' is required"),
        (
            '[[upstreams]]\nname = "x"\nkind = "openai"\nbogus = 1\n',
            "upstreams[0] (x): unknown setting 'bogus'",
        ),
        (
            '[[upstreams]]\nname = "x"\nkind = "openai"\nrotation = "random"\n',
            "upstreams[0] (x).rotation: unknown value 'random'",
        ),
        (
            '[[upstreams]]\nname = "x"\nkind = "openai"\nchat_template_thinking = "yes"\n',
            "upstreams[0] (x).chat_template_thinking: expected true/false, got 'yes'",
        ),
        (
            '[[upstreams]]\nname = "x"\nkind = "openai"\ntimeout = "fast"\n',
            "upstreams[0] (x).timeout: expected a number",
        ),
        (
            '[[upstreams]]\nname = "x"\nkind = "openai"\nkeys = ["env:NOPE_NOT_SET"]\n',
            "environment variable NOPE_NOT_SET is not set",
        ),
        (
            '[[models]]\nname = "m"\nupstream = "ghost"\n',
            "models[0] (m): upstream 'ghost' is not defined",
        ),
        ('[[keys]]\nname = "k"\nkey = ""\n', "keys[0] (k): 'key' is required"),
        (
            '[[keys]]\nname = "k"\nkey = "bk-one-secret"\n[[keys]]\nname = "k"\nkey = "bk-two"\n',
            "keys[1] (k): the same name as keys[0]",
        ),
        (
            '[[keys]]\nname = "a"\nkey = "bk-one-secret"\n[[keys]]\nname = "b"\n'
            'key = "bk-one-secret"\n',
            "keys[1]: the same key as keys[0]",
        ),
        (
            '[[upstreams]]\nname = "u"\nkind = "echo"\n[[models]]\nname = "m"\nupstream = "u"\n'
            '[[models]]\nname = "m"\nupstream = "u"\n',
            "models[1] (m): the same name as models[0]",
        ),
        (
            '[[keys]]\nname = "k"\nkey = "bk-long-enough"\nexpires = "soon"\n',
            "keys[0] (k).expires: expected a date",
        ),
        ('[server]\nport = "eighty"\n', "server.port: expected an integer"),
        ("[server]\nusage_flush_seconds = 0\n", "server.usage_flush_seconds: must be more than 0"),
        ("[server]\nkey_refresh_seconds = -1\n", "server.key_refresh_seconds: must be more than 0"),
        ("[server]\nwhatever = 1\n", "server: unknown setting 'whatever'"),
        (
            '[server]\ndefault_upstream = "ghost"\n',
            "server.default_upstream: upstream 'ghost' is not defined",
        ),
    ],
)
def test_config_errors_name_file_entry_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=str(path), environ={}, cwd=tmp_path)
    assert str(info.value).startswith(str(path) + ": ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_serve_with_bad_config_prints_one_line_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, '[[upstreams]]\nname = "x"\nkind = "grpc"\n')
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.stderr
    assert "unknown kind 'grpc'" in result.stderr and str(path) in result.stderr


def test_every_reasoning_setting_parses_and_others_are_refused(tmp_path: Path) -> None:
    from app.settings import REASONING

    for value in REASONING:
        text = f'[[upstreams]]\nname = "u"\nkind = "openai"\nreasoning = "{value}"\n'
        s = load_settings(config_path=str(write(tmp_path, text)), environ={}, cwd=tmp_path)
        assert s.upstreams[0].reasoning == value
    assert "replay_reasoning" in REASONING
    with pytest.raises(ConfigError, match="reasoning"):
        text = '[[upstreams]]\nname = "u"\nkind = "openai"\nreasoning = "always"\n'
        load_settings(config_path=str(write(tmp_path, text)), environ={}, cwd=tmp_path)


def test_chat_template_thinking_is_off_unless_set(tmp_path: Path) -> None:
    text = '[[upstreams]]\nname = "u"\nkind = "openai"\n'
    s = load_settings(config_path=str(write(tmp_path, text)), environ={}, cwd=tmp_path)
    assert s.upstreams[0].chat_template_thinking is False


def test_the_body_timeout_is_60_seconds_unless_the_file_says(tmp_path: Path) -> None:
    assert load_settings(environ={}, cwd=tmp_path).body_timeout_seconds == 60
    path = write(tmp_path, "[server]\nbody_timeout_seconds = 0.3\n")
    s = load_settings(config_path=str(path), environ={}, cwd=tmp_path)
    assert s.body_timeout_seconds == 0.3
    path = write(tmp_path, "[server]\nbody_timeout_seconds = 120\n")  # an integer is fine
    s = load_settings(config_path=str(path), environ={}, cwd=tmp_path)
    assert s.body_timeout_seconds == 120


KEY = '[[keys]]\nname = "k"\nkey = "bk-long-enough"\n'
MODEL = '[[upstreams]]\nname = "u"\nkind = "echo"\n[[models]]\nname = "m"\nupstream = "u"\n'
HUGE = 99999999999999999999  # TOML's integers are 64-bit: the largest it reads is near 9.2e18


def refusal(tmp_path: Path, text: str) -> str:
    """What loading the config file ``text`` is refused with, which names the file."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=str(path), environ={}, cwd=tmp_path)
    said = str(info.value)
    assert said.startswith(str(path) + ": ")
    return said


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nport = 99999\n", "server.port: a port must be between 0 and 65535, got 99999"),
        ("[server]\nanthropic_port = -1\n", "server.anthropic_port: a port must be between 0"),
        (KEY + "tpm = -5\n", "keys[0] (k).tpm: must be at least 0, got -5"),
        (KEY + f"rpm = {2**63 - 1}\n", "keys[0] (k).rpm: must be at most 2147483647"),
        (KEY + "expires = 9999-12-31\n", "keys[0] (k).expires: the expiry date is too far away"),
        (KEY + 'expires = "9999-12-31"\n', "keys[0] (k).expires: the expiry date is too far away"),
        (MODEL + "max_tokens = 0\n", "models[0] (m).max_tokens: must be at least 1"),
        (MODEL + f"max_tokens = {2**62}\n", "models[0] (m).max_tokens: must be at most"),
        (MODEL + f"context_window = {2**62}\n", "models[0] (m).context_window: must be at most"),
        (f"[server]\ndefault_tpm = {2**62}\n", "server.default_tpm: must be at most"),
        ('[server]\ndatabase_url = "foo://bar"\n', "server.database_url: unknown database kind"),
        # Kinds SQLAlchemy knows, without their drivers: a traceback at the first connection.
        (
            '[server]\ndatabase_url = "mysql://x"\n',
            "server.database_url: unsupported database kind 'mysql' (expected sqlite:// or",
        ),
        (
            '[server]\ndatabase_url = "mysql+pymysql://u@h/db"\n',
            "server.database_url: unsupported database kind 'mysql+pymysql'",
        ),
        (
            '[server]\ndatabase_url = "oracle://u@h/db"\n',
            "server.database_url: unsupported database kind 'oracle'",
        ),
    ],
)
def test_config_numbers_ports_and_dates_out_of_range(
    tmp_path: Path, text: str, message: str
) -> None:
    assert message in refusal(tmp_path, text)


def test_the_limits_config_dashboard_and_command_line_share() -> None:
    from app.settings import MAX_COUNT

    assert MAX_COUNT == 2**31 - 1 < 2**63 - 1 < HUGE


def test_config_keeps_port_zero_and_a_key_that_expired(tmp_path: Path) -> None:
    text = "[server]\nport = 0\nanthropic_port = 65535\n" + KEY + 'expires = "2020-01-01"\n'
    text += "rpm = 0\n"  # no limit, as REQUESTS_PER_MINUTE=0 is
    s = load_settings(config_path=str(write(tmp_path, text)), environ={}, cwd=tmp_path)
    assert (s.port, s.anthropic_port, s.keys[0].expires) == (0, 65535, date(2020, 1, 1))
    assert s.keys[0].rpm == 0
    # REQUESTS_PER_MINUTE=0 is "no limit" in the older proxies' setups.
    s = load_settings(environ={"REQUESTS_PER_MINUTE": "0"}, cwd=tmp_path)
    assert s.default_rpm == 0


@pytest.mark.parametrize(
    ("environ", "flags", "message"),
    [
        ({"BRIDGEKEEPER_PORT": "99999"}, {}, "environment: BRIDGEKEEPER_PORT: a port must be"),
        ({"ANTHROPIC_PORT": "65536"}, {}, "environment: ANTHROPIC_PORT: a port must be"),
        ({}, {"port": 99999}, "--port: a port must be between 0 and 65535, got 99999"),
        ({}, {"anthropic_port": -2}, "--anthropic-port: a port must be"),
        ({"BRIDGEKEEPER_DATABASE_URL": "foo://"}, {}, "BRIDGEKEEPER_DATABASE_URL: unknown"),
        ({"TOKENS_PER_MINUTE": str(HUGE)}, {}, "environment: TOKENS_PER_MINUTE: must be at most"),
    ],
)
def test_environment_and_flags_out_of_range(
    tmp_path: Path, environ: dict[str, str], flags: dict[str, int], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ, flags=flags, cwd=tmp_path)


UPSTREAM = '[[upstreams]]\nname = "u"\nkind = "openai"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # -1 put the purge's cutoff in the future: every usage event was deleted.
        ("[server]\nretention_days = -1\n", "server.retention_days: must be 0 (keep every"),
        ("[server]\nretention_days = 99999999\n", "server.retention_days: must be at most"),
        # 0 recorded no usage at all, and shutdown waited out the grace period.
        ("[server]\nusage_buffer_size = 0\n", "server.usage_buffer_size: must be at least 1"),
        ("[server]\nusage_buffer_size = -5\n", "server.usage_buffer_size: must be at least 1"),
        ("[server]\nmax_body_mb = 0\n", "server.max_body_mb: must be more than 0, got 0"),
        ("[server]\nmax_body_mb = -1\n", "server.max_body_mb: must be more than 0, got -1"),
        ("[server]\nmax_body_mb = inf\n", "server.max_body_mb: must be a finite number"),
        ("[server]\ngrace_seconds = -5\n", "server.grace_seconds: must be at least 0, got -5"),
        # 0 cut every request body at once, with a 408.
        (
            "[server]\nbody_timeout_seconds = 0\n",
            "server.body_timeout_seconds: must be more than 0, got 0",
        ),
        (
            "[server]\nbody_timeout_seconds = -1.5\n",
            "server.body_timeout_seconds: must be more than 0, got -1.5",
        ),
        ("[server]\nbody_timeout_seconds = nan\n", "server.body_timeout_seconds: must be a finite"),
        (
            '[server]\nbody_timeout_seconds = "60"\n',
            "server.body_timeout_seconds: expected a number",
        ),
        ("[server]\nrequest_timeout = 0\n", "server.request_timeout: must be more than 0"),
        ("[server]\ndefault_temperature = 2.5\n", "server.default_temperature: must be at most 2"),
        ('[server]\nadmin_password = ""\n', "server.admin_password: the password must not be"),
        ('[server]\nlog_level = "verbose"\n', "server.log_level: unknown log level 'verbose'"),
        ('[server]\nsecret_key = "not-a-key"\n', "server.secret_key: not a Fernet key"),
        (UPSTREAM + "timeout = -5\n", "upstreams[0] (u).timeout: must be more than 0, got -5"),
        (UPSTREAM + "timeout = 0\n", "upstreams[0] (u).timeout: must be more than 0, got 0"),
        (MODEL + "temperature = 9.5\n", "models[0] (m).temperature: must be at most 2, got 9.5"),
        (MODEL + "temperature = -0.1\n", "models[0] (m).temperature: must be at least 0"),
        (MODEL + "temperature = nan\n", "models[0] (m).temperature: must be a finite number"),
    ],
)
def test_config_values_the_gateway_cannot_use_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    said = refusal(tmp_path, text)
    assert message in said
    assert "\n" not in said
    assert "not-a-key" not in said  # a secret is never echoed


@pytest.mark.parametrize("name", ["a:b", "a/b", "c d", "-x", "", "x" * 65, "ünï"])
def test_upstream_names_that_would_clash_are_refused(tmp_path: Path, name: str) -> None:
    """A ":" reads as the inline ``upstream:model`` syntax; a long name stretched every page."""
    said = refusal(tmp_path, f'[[upstreams]]\nname = "{name}"\nkind = "echo"\n')
    if name:
        assert "invalid upstream name" in said and "up to 64 letters, digits" in said
    else:
        assert "'name' is required" in said


def test_upstream_names_of_letters_digits_dots_and_dashes_are_taken(tmp_path: Path) -> None:
    names = ["local", "vllm-2", "ollama_box.lan", "A" * 64]
    text = "".join(f'[[upstreams]]\nname = "{n}"\nkind = "echo"\n' for n in names)
    settings = load_settings(config_path=str(write(tmp_path, text)), environ={})
    assert [u.name for u in settings.upstreams] == names


def test_commands_that_call_no_upstream_take_a_file_whose_secrets_are_unset(
    tmp_path: Path,
) -> None:
    text = (
        '[[upstreams]]\nname = "u"\nkind = "openai"\n'
        'keys = ["env:UNSET_SECRET", "sk-inline-0001", "env:SET_SECRET"]\n'
    )
    path = str(write(tmp_path, text))
    env = {"SET_SECRET": "sk-from-env-0002"}
    with pytest.raises(ConfigError, match="environment variable UNSET_SECRET is not set"):
        load_settings(config_path=path, environ=env)
    settings = load_settings(config_path=path, environ=env, upstream_secrets=False)
    assert settings.upstreams[0].keys == ("sk-inline-0001", "sk-from-env-0002")


URL_PASSWORD = (
    "a user name or password in the URL is refused (it would show in error messages): "
    "put the secret in keys instead"
)


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        (UPSTREAM + 'base_url = "http://user:hunter2@h/v1"\n', "upstreams[0] (u).base_url"),
        (UPSTREAM + 'base_url = "https://hunter2@h:8443"\n', "upstreams[0] (u).base_url"),
        (UPSTREAM + 'base_url = "user:hunter2@h/v1"\n', "upstreams[0] (u).base_url"),
        (
            UPSTREAM + 'tokenize_url = "http://user:hunter2@h/tokenize"\n',
            "upstreams[0] (u).tokenize_url",
        ),
    ],
)
def test_a_password_in_an_upstream_url_is_refused(tmp_path: Path, text: str, entry: str) -> None:
    """It showed in every client's error message ("invalid upstream URL http://user:…"),
    the usage trail, the dashboard and the log, and every request with a key was a 500
    (aiohttp refuses one next to an ``Authorization`` header)."""
    said = refusal(tmp_path, text)
    assert said.endswith(f": {entry}: {URL_PASSWORD}")
    assert "hunter2" not in said and "\n" not in said


def test_an_at_sign_past_the_host_is_no_password(tmp_path: Path) -> None:
    text = UPSTREAM + 'base_url = "http://h/v1/team@example"\ntokenize_url = "http://h/t?u=a@b"\n'
    s = load_settings(config_path=str(write(tmp_path, text)), environ={}, cwd=tmp_path)
    assert (s.upstreams[0].base_url, s.upstreams[0].tokenize_url) == (
        "http://h/v1/team@example",
        "http://h/t?u=a@b",
    )


@pytest.mark.parametrize("variable", ["ANTHROPIC", "OPENAI"])
def test_a_password_in_a_bootstrapping_base_url_is_refused(tmp_path: Path, variable: str) -> None:
    environ = {f"{variable}_BASE_URL": "http://user:hunter2@backend.local/v1"}
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ, cwd=tmp_path)
    said = str(info.value)
    assert said == (
        f"environment: {variable}_BASE_URL: a user name or password in the URL is refused "
        f"(it would show in error messages): put the secret in {variable}_API_KEY instead"
    )
    # Not refused where it bootstraps nothing: the config file defines that upstream.
    name = variable.lower()
    text = f'[[upstreams]]\nname = "{name}"\nkind = "{name}"\n'
    s = load_settings(config_path=str(write(tmp_path, text)), environ=environ, cwd=tmp_path)
    assert [u.name for u in s.upstreams] == [name]


def test_the_bounds_take_their_edges_and_case_free_log_levels(tmp_path: Path) -> None:
    """Each bound's edge is accepted: ``retention_days = 0`` keeps every event (no purge),
    as it always did."""
    from app.db.admins import MIN_PASSWORD

    text = (
        f"[server]\nretention_days = 0\nusage_buffer_size = 1\nmax_body_mb = 0.001\n"
        f"grace_seconds = 0\nbody_timeout_seconds = 0.001\nrequest_timeout = 0.5\n"
        f"default_temperature = 2\n"
        f'admin_password = "{"p" * MIN_PASSWORD}"\nlog_level = "debug"\n'
        + UPSTREAM
        + "timeout = 0.5\n"
        + '[[models]]\nname = "m"\nupstream = "u"\ntemperature = 0\n'
    )
    s = load_settings(config_path=str(write(tmp_path, text)), environ={}, cwd=tmp_path)
    assert (s.retention_days, s.usage_buffer_size, s.grace_seconds) == (0, 1, 0)
    assert s.body_timeout_seconds == 0.001
    assert (s.request_timeout, s.default_temperature, s.log_level) == (0.5, 2, "debug")
    assert (s.upstreams[0].timeout, s.models[0].temperature) == (0.5, 0)
    for level in ("WARNING", "warn", "Error", "critical", "NOTSET"):
        env = {"BRIDGEKEEPER_LOG_LEVEL": level}
        assert load_settings(environ=env, cwd=tmp_path).log_level == level


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"REQUEST_TIMEOUT": "0"}, "environment: REQUEST_TIMEOUT: must be more than 0, got 0"),
        ({"REQUEST_TIMEOUT": "-3"}, "environment: REQUEST_TIMEOUT: must be more than 0"),
        ({"REQUEST_TIMEOUT": "nan"}, "environment: REQUEST_TIMEOUT: must be a finite number"),
        ({"MODEL_TEMPERATURE": "3"}, "environment: MODEL_TEMPERATURE: must be at most 2, got 3"),
        ({"MODEL_TEMPERATURE": "-1"}, "environment: MODEL_TEMPERATURE: must be at least 0"),
        (
            {"BRIDGEKEEPER_LOG_LEVEL": "loud"},
            "environment: BRIDGEKEEPER_LOG_LEVEL: unknown log level 'loud'",
        ),
        (
            {"BRIDGEKEEPER_SECRET_KEY": "hunter2"},
            "environment: BRIDGEKEEPER_SECRET_KEY: not a Fernet key",
        ),
    ],
)
def test_environment_values_have_the_files_bounds(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ, cwd=tmp_path)
    assert str(info.value) == message or str(info.value).startswith(message)
    assert "hunter2" not in str(info.value)


def test_a_short_configured_password_is_the_operator_s_choice(tmp_path: Path) -> None:
    """DESIGN.md's example password is "..."; the dashboard's forms still ask for 8
    characters, and `serve` warns (`password_warning`)."""
    s = load_settings(config_path=str(write(tmp_path, '[server]\nadmin_password = "..."\n')))
    assert s.admin_password == "..."
    assert password_warning("...") == "the admin password has fewer than 8 characters"
    assert password_warning("eight-ch") is None
    s = load_settings(environ={"BRIDGEKEEPER_ADMIN_PASSWORD": "short"}, cwd=tmp_path)
    assert s.admin_password == "short"


def test_the_environment_wins_over_a_bad_file_value_and_is_checked_itself(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, '[server]\nadmin_password = ""\n')
    env = {"BRIDGEKEEPER_ADMIN_PASSWORD": "long-enough-pw"}
    s = load_settings(config_path=str(path), environ=env, cwd=tmp_path)
    assert s.admin_password == "long-enough-pw"


def test_environment_database_url_for_alembic(tmp_path: Path) -> None:
    from app.settings import environment_database_url

    assert environment_database_url({}, tmp_path) is None
    url = "postgresql://u:p@h/db"
    assert environment_database_url({"BRIDGEKEEPER_DATABASE_URL": url}, tmp_path) == url
    (tmp_path / ".env").write_text("BRIDGEKEEPER_DATABASE_URL=sqlite:///from-dotenv.db\n")
    assert environment_database_url({}, tmp_path) == "sqlite:///from-dotenv.db"
    with pytest.raises(ConfigError, match="environment: BRIDGEKEEPER_DATABASE_URL: unknown"):
        environment_database_url({"BRIDGEKEEPER_DATABASE_URL": "foo://x"}, tmp_path)
