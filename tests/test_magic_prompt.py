"""Magic Prompt against a local fake HTTP server (127.0.0.1, ephemeral port). No network."""

from __future__ import annotations

import inspect
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from model.caption import magic_prompt as mp
from model.caption import CaptionError, check_caption

VALID = {
    "high_level_description": "A phone photograph of a red bicycle leaning on a brick wall.",
    "style_description": {"aesthetics": "plain", "lighting": "overcast daylight", "photo": "26mm, eye level",
                          "medium": "photograph"},
    "compositional_deconstruction": {"background": "A weathered red brick wall above a grey pavement.", "elements": [
        {"type": "obj", "bbox": [300, 200, 900, 800], "desc": "Red city bicycle with a wicker basket."},
        {"type": "text", "bbox": [100, 300, 200, 700], "text": "Fahrräder", "desc": "White stencil letters."}]},
}
VALID_TEXT = json.dumps(VALID, separators=(",", ":"), ensure_ascii=False)
INVALID_TEXT = json.dumps({"compositional_deconstruction": {"elements": [
    {"type": "obj", "bbox": [0, 0, 500, 1500], "desc": "x"}]}})
SECRET = "sk-test-secret-123"


class FakeServer:
    """Replies from a script: each entry is (status, body, delay_s) or (status, body, delay_s, headers)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: list[tuple] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                server.requests.append({"path": self.path, "headers": dict(self.headers),
                                        "body": json.loads(raw.decode("utf-8"))})
                status, body, delay, *extra = server.script.pop(0) if server.script else (500, "no script", 0)
                time.sleep(delay)
                payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
                payload = payload.encode("utf-8") if isinstance(payload, str) else payload
                try:
                    self.send_response(status)
                    for key, value in (extra[0] if extra else {}).items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()

    def chat(self, content, status=200, delay=0.0):
        self.script.append((status, {"choices": [{"message": {"role": "assistant", "content": content},
                                                  "finish_reason": "stop"}]}, delay))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def no_keys_file(tmp_path):
    return tmp_path / "absent.json"


def local_env(server, **extra):
    """The fake server is the configured endpoint, with the generic key bound to it."""
    return {mp.BASE_URL_ENV: server.url + "/v1", mp.GENERIC_KEY_ENV: SECRET, **extra}


def run(server, no_keys_file, **kw):
    args = dict(provider="openai_compatible", env=local_env(server), keys_file=no_keys_file, timeout=5)
    args.update(kw)
    return mp.expand("a red bicycle against a wall", 1344, 768, **args)


# --------------------------------------------------------------------------- #
# Pure helpers.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("size,ratio", [((1024, 1024), "1:1"), ((768, 1376), "24:43"), ((1344, 768), "7:4"),
                                        ((1920, 1080), "16:9")])
def test_aspect_ratio(size, ratio):
    assert mp.aspect_ratio(*size) == ratio


def test_aspect_ratio_rejects_non_positive():
    with pytest.raises(ValueError, match="width and height must be positive"):
        mp.aspect_ratio(0, 512)


def test_system_prompt_example_is_a_canonical_caption_and_states_the_rules():
    text = mp.system_prompt()
    example = text.splitlines()[-1]
    report = check_caption(example)
    assert (report.errors, report.fixes, report.formatting) == ([], [], [])
    for rule in ("[y_min, x_min, y_max, x_max]", "UPPERCASE", "single line", "code fences", "\\uXXXX",
                 '{"aesthetics":STRING,"lighting":STRING,"photo":STRING,"medium":"photograph"',
                 '{"aesthetics":STRING,"lighting":STRING,"medium":STRING,"art_style":STRING'):
        assert rule in text, rule


def test_chat_completions_url():
    assert mp.chat_completions_url("http://h/v1/") == "http://h/v1/chat/completions"
    assert mp.chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


# --------------------------------------------------------------------------- #
# OpenAI-compatible provider.
# --------------------------------------------------------------------------- #


def test_valid_reply(server, no_keys_file):
    server.chat("```json\n" + json.dumps({"aspect_ratio": "7:4", **VALID}, indent=2) + "\n```")
    result = run(server, no_keys_file, seed=7)
    assert result.caption == VALID_TEXT
    assert result.attempts == 1 and not result.repaired
    assert any("code fence" in f for f in result.report.fixes)
    assert any(f.startswith("$.aspect_ratio: dropped") for f in result.report.fixes)
    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    body = request["body"]
    assert body["model"] == mp.DEFAULT_MODEL and body["seed"] == 7
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == mp.system_prompt()
    assert "7:4" in body["messages"][1]["content"]
    assert "a red bicycle against a wall" in body["messages"][1]["content"]


def test_aspect_ratio_mismatch_is_a_warning(server, no_keys_file):
    server.chat(json.dumps({"aspect_ratio": "1:1", **VALID}))
    result = run(server, no_keys_file)
    assert result.report.warnings == ["$.aspect_ratio: the model planned for 1:1 but the target is 7:4; "
                                      "check that the boxes still fit"]
    server.chat(json.dumps({"aspect_ratio": "1344x768", **VALID}))
    assert run(server, no_keys_file).report.warnings == []


def test_bboxes_are_kept_by_default_and_dropped_on_request(server, no_keys_file):
    server.chat(VALID_TEXT)
    kept = run(server, no_keys_file)
    assert [e.get("bbox") for e in kept.report.data["compositional_deconstruction"]["elements"]] == [
        [300, 200, 900, 800], [100, 300, 200, 700]]
    server.chat(VALID_TEXT)
    dropped = run(server, no_keys_file, keep_bboxes=False)
    assert '"bbox"' not in dropped.caption
    assert "removed 2 bbox(es)" in dropped.report.fixes[-1]


def test_invalid_reply_is_repaired_once_with_the_error_list(server, no_keys_file):
    server.chat(INVALID_TEXT)
    server.chat(VALID_TEXT)
    result = run(server, no_keys_file, model="local-model")
    assert result.caption == VALID_TEXT
    assert result.attempts == 2 and result.repaired
    assert len(server.requests) == 2
    messages = server.requests[1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == INVALID_TEXT
    repair = messages[3]["content"]
    assert "$.compositional_deconstruction: missing required key 'background'" in repair
    assert "$.compositional_deconstruction.elements[0].bbox[3]: got 1500; expected an integer in 0..1000" in repair
    assert server.requests[1]["body"]["model"] == "local-model"


def test_still_invalid_after_repair_raises_caption_error_with_all_problems(server, no_keys_file):
    server.chat("Sure! Here is a lovely picture of a bicycle.")
    server.chat(INVALID_TEXT)
    with pytest.raises(CaptionError) as info:
        run(server, no_keys_file)
    assert len(server.requests) == 2
    assert "plain-text prompts" in server.requests[1]["body"]["messages"][3]["content"]
    message = str(info.value)
    assert message.startswith("Magic Prompt: the model's caption is still invalid after one repair: 2 problems:")
    assert "missing required key 'background'" in message and "got 1500" in message
    assert len(info.value.report.errors) == 2


def test_timeout_becomes_clear_value_error(server, no_keys_file):
    server.chat(VALID_TEXT, delay=2.0)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"no reply from http://127\.0\.0\.1:\d+/v1/chat/completions within 0\.3 s"):
        run(server, no_keys_file, timeout=0.3)
    assert time.monotonic() - start < 1.5


def test_http_401_names_the_key_source_and_never_the_key(server, no_keys_file):
    server.script.append((401, {"error": {"message": "Invalid API key"}}, 0))
    with pytest.raises(ValueError) as info:
        run(server, no_keys_file)
    message = str(info.value)
    assert message.startswith(f"Magic Prompt: HTTP 401 from {server.url}/v1/chat/completions — check {mp.GENERIC_KEY_ENV}")
    assert "Invalid API key" in message
    assert SECRET not in message
    assert not isinstance(info.value, CaptionError)


@pytest.mark.parametrize("status,fragment", [(429, "rate limited"), (500, "retry later"), (503, "retry later"),
                                             (404, "check base_url")])
def test_http_errors(server, no_keys_file, status, fragment):
    server.script.append((status, "oops", 0))
    with pytest.raises(ValueError, match=f"HTTP {status} from .*{fragment}"):
        run(server, no_keys_file)


def test_non_json_http_body(server, no_keys_file):
    server.script.append((200, "<html>gateway</html>", 0))
    with pytest.raises(ValueError, match=r"did not return JSON: '<html>gateway</html>'"):
        run(server, no_keys_file)


def test_reply_without_choices(server, no_keys_file):
    server.script.append((200, {"error": "model not loaded"}, 0))
    with pytest.raises(ValueError, match="returned no chat message"):
        run(server, no_keys_file)


def test_redirects_are_not_followed(server, no_keys_file):
    server.script.append((302, "", 0, {"Location": server.url + "/elsewhere"}))
    with pytest.raises(ValueError, match="HTTP 302 .*redirects are not followed"):
        run(server, no_keys_file)
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"]


def test_unreachable_server(no_keys_file):
    fake = FakeServer()
    url = fake.url
    fake.close()
    with pytest.raises(ValueError, match="cannot reach .*check base_url"):
        mp.expand("x", 512, 512, provider="openai_compatible", base_url=url + "/v1",
                  env={}, keys_file=no_keys_file, timeout=2)


# --------------------------------------------------------------------------- #
# Keys: from env / keys file, bound to hosts, never from the workflow.
# --------------------------------------------------------------------------- #


def test_expand_takes_no_api_key_argument():
    params = inspect.signature(mp.expand).parameters
    assert not any(name in params for name in ("api_key", "key", "token", "authorization"))


def test_provider_none_sends_nothing_and_explains_setup(server, no_keys_file):
    with pytest.raises(ValueError, match="no provider selected.*IDEOGRAM_API_KEY.*OPENROUTER_API_KEY"):
        run(server, no_keys_file, provider="none")
    assert server.requests == []


def test_workflow_base_url_override_gets_no_key(server, no_keys_file):
    """A workflow pointing base_url at another host must not receive any configured key."""
    server.chat(VALID_TEXT)
    env = {mp.GENERIC_KEY_ENV: SECRET, "OPENROUTER_API_KEY": "or-key", "OPENAI_API_KEY": "oa-key"}
    run(server, no_keys_file, env=env, base_url=server.url + "/v1")
    assert "Authorization" not in server.requests[0]["headers"]


def test_keys_file_entry_for_the_host(server, tmp_path):
    keys = tmp_path / "magic_prompt_keys.json"
    host = server.url.split("//")[1]
    keys.write_text(json.dumps({"api_keys": {host: "file-key"}}))
    server.chat(VALID_TEXT)
    run(server, keys, env={}, base_url=server.url + "/v1")
    assert server.requests[0]["headers"]["Authorization"] == "Bearer file-key"


def test_keys_file_base_url_makes_the_generic_key_apply(server, tmp_path):
    keys = tmp_path / "magic_prompt_keys.json"
    keys.write_text(json.dumps({"base_urls": {"openai_compatible": server.url + "/v1"}}))
    server.chat(VALID_TEXT)
    run(server, keys, env={mp.GENERIC_KEY_ENV: SECRET})
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_broken_keys_file_is_a_clear_error(tmp_path):
    keys = tmp_path / "magic_prompt_keys.json"
    keys.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read magic_prompt_keys.json"):
        mp.expand("x", 512, 512, provider="openai_compatible", env={}, keys_file=keys)


@pytest.mark.parametrize("url,env,expected", [
    ("https://openrouter.ai/api/v1", {"OPENROUTER_API_KEY": "or", "OPENAI_API_KEY": "oa"}, "or"),
    ("https://api.openai.com/v1", {"OPENROUTER_API_KEY": "or", "OPENAI_API_KEY": "oa"}, "oa"),
    ("https://api.openai.com/v1", {"OPENROUTER_API_KEY": "or"}, None),
    ("https://openrouter.ai/api/v1", {mp.GENERIC_KEY_ENV: "gen"}, "gen"),  # the configured default host
    ("https://openrouter.ai/api/v1", {"MAGIC_PROMPT_API_KEY": "ref"}, "ref"),  # the reference CLI's name
    ("https://api.ideogram.ai/v1/ideogram-v4/magic-prompt", {"MAGIC_PROMPT_API_KEY": "ref"}, None),
    ("https://evil.example/v1", {mp.GENERIC_KEY_ENV: "gen", "OPENROUTER_API_KEY": "or"}, None),
])
def test_keys_are_bound_to_hosts(url, env, expected):
    endpoint = mp.resolve_endpoint("openai_compatible", url, env=env, config={})
    assert mp.resolve_api_key(endpoint, env=env, config={}).value == expected


@pytest.mark.parametrize("url,config,expected", [
    ("https://evil.example/v1", {"api_keys": {"other.example": "k", "openrouter": "or"}}, None),  # never another host's
    ("https://OpenRouter.AI/api/v1", {"api_keys": {"OpenRouter": "or"}}, "or"),  # aliases and hosts ignore case
    ("http://localhost:1234/v1", {"api_keys": {"localhost:1234": "lm", "localhost": "any"}}, "lm"),  # host:port first
    ("http://localhost:8080/v1", {"api_keys": {"localhost:1234": "lm", "localhost": "any"}}, "any"),
    ("http://localhost:8080/v1", {"api_keys": {"localhost:1234": "lm"}}, None),
])
def test_keys_file_entries_are_bound_to_their_host(url, config, expected):
    endpoint = mp.resolve_endpoint("openai_compatible", url, env={}, config=config)
    assert mp.resolve_api_key(endpoint, env={}, config=config).value == expected


def test_generic_key_goes_to_the_configured_host_and_port_only():
    config = {"base_urls": {"openai_compatible": "http://localhost:11434/v1"}}
    env = {mp.GENERIC_KEY_ENV: "gen", mp.BASE_URL_ENV: "https://openrouter.ai/api/v1"}
    configured = mp.resolve_endpoint("openai_compatible", "", env=env, config=config)
    assert configured.url == "http://localhost:11434/v1/chat/completions"  # the keys file's base_urls come first
    assert mp.resolve_api_key(configured, env=env, config=config).value == "gen"
    other_port = mp.resolve_endpoint("openai_compatible", "http://localhost:8080/v1", env=env, config=config)
    assert not other_port.configured and mp.resolve_api_key(other_port, env=env, config=config).value is None
    assert mp.resolve_endpoint("openai_compatible", "", env=env, config={}).url == \
        "https://openrouter.ai/api/v1/chat/completions"  # then the environment's
    assert mp.resolve_endpoint("openai_compatible", "", "  ", env={}, config={}).model == mp.DEFAULT_MODEL


def test_an_empty_variable_is_no_key():
    endpoint = mp.resolve_endpoint("openai_compatible", "https://openrouter.ai/api/v1", env={}, config={})
    key = mp.resolve_api_key(endpoint, env={"OPENROUTER_API_KEY": "", "MAGIC_PROMPT_API_KEY": "ref"}, config={})
    assert (key.value, key.source) == ("ref", "MAGIC_PROMPT_API_KEY")


def test_vendor_host_without_key_fails_before_sending(no_keys_file):
    with pytest.raises(ValueError, match="no API key for openrouter.ai — set OPENROUTER_API_KEY or "
                                         "MAGIC_PROMPT_API_KEY or IDEOGRAM4_MAGIC_PROMPT_API_KEY"):
        mp.expand("x", 512, 512, provider="openai_compatible", env={}, keys_file=no_keys_file)


def test_empty_prompt_and_bad_base_url(no_keys_file):
    with pytest.raises(ValueError, match="the prompt is empty"):
        mp.expand("   ", 512, 512, provider="openai_compatible", env={}, keys_file=no_keys_file)
    with pytest.raises(ValueError, match="is not an http"):
        mp.expand("x", 512, 512, provider="openai_compatible", base_url="file:///etc/passwd", env={},
                  keys_file=no_keys_file)


# --------------------------------------------------------------------------- #
# Ideogram hosted provider.
# --------------------------------------------------------------------------- #


def ideogram_config(server, tmp_path):
    keys = tmp_path / "magic_prompt_keys.json"
    keys.write_text(json.dumps({"base_urls": {"ideogram": server.url + "/v1/ideogram-v4/magic-prompt"}}))
    return keys


def test_ideogram_endpoint(server, tmp_path):
    reordered = {"compositional_deconstruction": {"elements": [dict(reversed(list(e.items())))
                                                               for e in VALID["compositional_deconstruction"]["elements"]],
                                                  "background": VALID["compositional_deconstruction"]["background"]},
                 "style_description": VALID["style_description"],
                 "high_level_description": VALID["high_level_description"]}
    server.script.append((200, {"aspect_ratio": "7x4", "json_prompt": reordered}, 0))
    result = mp.expand("a red bicycle", 1344, 768, provider="ideogram", env={mp.GENERIC_KEY_ENV: SECRET},
                       keys_file=ideogram_config(server, tmp_path))
    assert result.caption == VALID_TEXT
    [request] = server.requests
    assert request["path"] == "/v1/ideogram-v4/magic-prompt"
    assert request["headers"]["Api-Key"] == SECRET
    assert "Authorization" not in request["headers"]
    assert request["body"] == {"text_prompt": "a red bicycle", "aspect_ratio": "7x4"}


def test_ideogram_invalid_caption_is_not_retried(server, tmp_path):
    server.script.append((200, {"json_prompt": json.loads(INVALID_TEXT)}, 0))
    with pytest.raises(CaptionError, match="Ideogram endpoint returned an invalid caption"):
        mp.expand("x", 1024, 1024, provider="ideogram", env={mp.GENERIC_KEY_ENV: SECRET},
                  keys_file=ideogram_config(server, tmp_path))
    assert len(server.requests) == 1


def test_ideogram_without_key_sends_nothing(server, tmp_path):
    # a workflow-chosen host gets no env key, only a keys-file entry for exactly that host
    with pytest.raises(ValueError, match=f'needs an API key — set an entry "{server.url[7:]}" under "api_keys"'):
        mp.expand("x", 1024, 1024, provider="ideogram", env={"IDEOGRAM_API_KEY": "id", mp.GENERIC_KEY_ENV: "gen"},
                  base_url=server.url + "/magic", keys_file=tmp_path / "absent.json")
    assert server.requests == []
    # the default host names its variables (raised before any request is made)
    with pytest.raises(ValueError, match="needs an API key — set IDEOGRAM_API_KEY or IDEOGRAM4_MAGIC_PROMPT_API_KEY"):
        mp.expand("x", 1024, 1024, provider="ideogram", env={"OPENROUTER_API_KEY": "or"},
                  keys_file=tmp_path / "absent.json")


def test_ideogram_reply_without_json_prompt(server, tmp_path):
    server.script.append((200, {"aspect_ratio": "1x1"}, 0))
    with pytest.raises(ValueError, match="returned no json_prompt"):
        mp.expand("x", 1024, 1024, provider="ideogram", env={mp.GENERIC_KEY_ENV: SECRET},
                  keys_file=ideogram_config(server, tmp_path))


def test_keys_file_is_git_ignored():
    gitignore = Path(__file__).resolve().parent.parent / ".gitignore"
    assert "/magic_prompt_keys.json" in gitignore.read_text().splitlines()
    assert mp.KEYS_FILE == Path(__file__).resolve().parent.parent / "magic_prompt_keys.json"


def test_dropping_bboxes_uses_the_checkers_own_parsing():
    """A byte-order mark, fences and escapes are handled the same with and without bbox dropping."""
    caption = ('{"compositional_deconstruction":{"background":"caf\\u00e9","elements":'
               '[{"type":"obj","bbox":[0,0,10,10],"desc":"a cup"}]}}')
    reply = "\ufeff```json\n" + caption + "\n```"
    kept, dropped = mp.finish_reply(reply, keep_bboxes=True), mp.finish_reply(reply, keep_bboxes=False)
    assert not dropped.errors and '"bbox"' not in dropped.canonical and '"bbox"' in kept.canonical
    assert dropped.fixes == kept.fixes + ["$.compositional_deconstruction.elements: removed 1 bbox(es) "
                                          "(keep_bboxes is off)"]
    assert dropped.formatting == kept.formatting
