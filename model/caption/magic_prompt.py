"""Magic Prompt: plain-text idea + target size -> validated Ideogram 4 caption.

Pure Python, stdlib ``urllib`` only. Two providers (spec 6.5):

* ``ideogram``           Ideogram's hosted endpoint (``POST .../magic-prompt``,
                         ``Api-Key`` header, body ``text_prompt`` + ``aspect_ratio``
                         ``"WxH"``). The expansion runs server-side.
* ``openai_compatible``  any ``/chat/completions`` endpoint (OpenRouter, OpenAI,
                         Ollama, LM Studio, ...) driven by our own system prompt
                         (``magic_prompt_system.txt``).

The reply is stripped of code fences, parsed, its ``aspect_ratio`` dropped and
checked with :func:`model.caption.check_caption`. An invalid chat reply gets
exactly one repair request listing the problems; if that is still invalid a
:class:`CaptionError` lists every problem.

API keys never come from the workflow. They are read from environment
variables or from ``magic_prompt_keys.json`` in the pack root (git-ignored),
and every key is bound to a host, so a workflow that points ``base_url`` at
another server cannot make us send a key there:

* ``IDEOGRAM_API_KEY``   only to ``api.ideogram.ai``
* ``OPENROUTER_API_KEY`` (or the reference CLI's ``MAGIC_PROMPT_API_KEY``) only
  to ``openrouter.ai``
* ``OPENAI_API_KEY``     only to ``api.openai.com``
* ``IDEOGRAM4_MAGIC_PROMPT_API_KEY`` only to the provider's *configured*
  endpoint (host and port): the keys file's ``base_urls``, else
  ``IDEOGRAM4_MAGIC_PROMPT_BASE_URL`` (openai_compatible), else the built-in default.
* ``magic_prompt_keys.json``::

      {"api_keys": {"openrouter.ai": "sk-or-...", "localhost:1234": "lm-studio"},
       "base_urls": {"openai_compatible": "http://localhost:11434/v1"}}

  ``api_keys`` maps a host (``host`` or ``host:port``; aliases ``ideogram``,
  ``openrouter``, ``openai``) to its key.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .checker import CaptionError, CaptionReport, check_caption

PROVIDERS = ("none", "ideogram", "openai_compatible")
IDEOGRAM_URL = "https://api.ideogram.ai/v1/ideogram-v4/magic-prompt"
OPENAI_COMPATIBLE_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_MODEL = "anthropic/claude-opus-4.8"  # the reference's OpenRouter configuration
DEFAULT_TIMEOUT_S = 120.0
MAX_TOKENS = 16384
MAX_RESPONSE_BYTES = 8 * 1024 * 1024

GENERIC_KEY_ENV = "IDEOGRAM4_MAGIC_PROMPT_API_KEY"
BASE_URL_ENV = "IDEOGRAM4_MAGIC_PROMPT_BASE_URL"
#: Vendor variables and the only host each is sent to. MAGIC_PROMPT_API_KEY is the
#: reference CLI's name for its OpenRouter key.
VENDOR_KEY_ENV = {
    "api.ideogram.ai": ("IDEOGRAM_API_KEY",),
    "openrouter.ai": ("OPENROUTER_API_KEY", "MAGIC_PROMPT_API_KEY"),
    "api.openai.com": ("OPENAI_API_KEY",),
}
HOST_ALIASES = {"ideogram": "api.ideogram.ai", "openrouter": "openrouter.ai", "openai": "api.openai.com"}
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

PACK_ROOT = Path(__file__).resolve().parents[2]
KEYS_FILE = PACK_ROOT / "magic_prompt_keys.json"
SYSTEM_PROMPT_FILE = Path(__file__).resolve().with_name("magic_prompt_system.txt")

_NOT_CONFIGURED = (
    "Magic Prompt: no provider selected. Pick 'ideogram' (set IDEOGRAM_API_KEY) or 'openai_compatible' "
    "(OpenRouter: set OPENROUTER_API_KEY; OpenAI: OPENAI_API_KEY with base_url https://api.openai.com/v1; "
    "Ollama / LM Studio: base_url http://localhost:11434/v1 or http://localhost:1234/v1, no key). "
    f"Keys can also go in {KEYS_FILE.name} in the pack folder; never into the workflow."
)


# --------------------------------------------------------------------------- #
# Small pure helpers.
# --------------------------------------------------------------------------- #


def aspect_ratio(width: int, height: int) -> str:
    """``"W:H"`` reduced by the gcd (1024x1024 -> "1:1", 768x1376 -> "24:43")."""
    if width <= 0 or height <= 0:
        raise ValueError(f"Magic Prompt: width and height must be positive, got {width}x{height}")
    g = math.gcd(width, height)
    return f"{width // g}:{height // g}"


def system_prompt() -> str:
    return SYSTEM_PROMPT_FILE.read_text(encoding="utf-8").strip()


def user_message(prompt: str, width: int, height: int) -> str:
    return (f"Target aspect ratio (width:height): {aspect_ratio(width, height)} "
            f"({width}x{height} pixels).\nIdea: {prompt}")


def repair_message(errors: list[str]) -> str:
    problems = "\n".join(f"- {e}" for e in errors)
    return ("That caption does not pass validation:\n"
            f"{problems}\n"
            "Return the complete corrected caption: one minified JSON object on a single line, keys in the "
            "documented order, no code fences, no commentary. Change only what is needed to fix these problems.")


def _host(url: str) -> tuple[str, str]:
    """(hostname, netloc without credentials), lowercased."""
    parts = urllib.parse.urlsplit(url)
    hostname = (parts.hostname or "").lower()
    netloc = hostname if parts.port is None else f"{hostname}:{parts.port}"
    return hostname, netloc


def chat_completions_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


# --------------------------------------------------------------------------- #
# Configuration: endpoints and keys.
# --------------------------------------------------------------------------- #


def load_keys_file(path: Path | None = None) -> dict:
    path = KEYS_FILE if path is None else Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"Magic Prompt: cannot read {path.name}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"Magic Prompt: {path.name} must hold a JSON object with 'api_keys' and/or 'base_urls'")
    return data


@dataclass(frozen=True)
class Endpoint:
    provider: str
    url: str          # the URL that is POSTed to
    configured: bool  # True when the URL is the configured default (not a workflow override)
    model: str = ""


def resolve_endpoint(provider: str, base_url: str = "", model: str = "", *,
                     env: Mapping[str, str] | None = None, config: dict | None = None) -> Endpoint:
    """Where to send the request. ``base_url`` (a widget) overrides the configured default."""
    env = os.environ if env is None else env
    config = {} if config is None else config
    if provider not in PROVIDERS:
        raise ValueError(f"Magic Prompt: provider {provider!r} is not one of {', '.join(PROVIDERS)}")
    if provider == "none":
        raise ValueError(_NOT_CONFIGURED)
    base_urls = config.get("base_urls") if isinstance(config.get("base_urls"), dict) else {}
    if provider == "ideogram":
        default = base_urls.get("ideogram") or IDEOGRAM_URL
    else:
        default = base_urls.get("openai_compatible") or env.get(BASE_URL_ENV) or OPENAI_COMPATIBLE_BASE_URL
    chosen = (base_url or "").strip() or default
    scheme = urllib.parse.urlsplit(chosen).scheme
    if scheme not in ("http", "https") or not _host(chosen)[0]:
        raise ValueError(f"Magic Prompt: base_url {chosen!r} is not an http(s) URL")
    configured = _host(chosen)[1] == _host(default)[1]
    if provider == "openai_compatible":
        return Endpoint(provider, chat_completions_url(chosen), configured, (model or "").strip() or DEFAULT_MODEL)
    return Endpoint(provider, chosen, configured)


@dataclass(frozen=True)
class ApiKey:
    value: str | None
    source: str  # where it came from, or where it could come from (for messages)


def resolve_api_key(endpoint: Endpoint, *, env: Mapping[str, str] | None = None,
                    config: dict | None = None) -> ApiKey:
    """The key for ``endpoint``'s host, honouring the host bindings in the module docstring."""
    env = os.environ if env is None else env
    config = {} if config is None else config
    hostname, netloc = _host(endpoint.url)
    file_keys = config.get("api_keys") if isinstance(config.get("api_keys"), dict) else {}
    file_keys = {HOST_ALIASES.get(k.lower(), k.lower()): v for k, v in file_keys.items() if isinstance(k, str)}
    hints = []
    for name in VENDOR_KEY_ENV.get(hostname, ()):
        hints.append(name)
        if env.get(name):
            return ApiKey(env[name], name)
    for host_key in (netloc, hostname):
        if isinstance(file_keys.get(host_key), str) and file_keys[host_key]:
            return ApiKey(file_keys[host_key], f"{KEYS_FILE.name} entry '{host_key}'")
    if endpoint.configured:
        hints.append(GENERIC_KEY_ENV)
        if env.get(GENERIC_KEY_ENV):
            return ApiKey(env[GENERIC_KEY_ENV], GENERIC_KEY_ENV)
    hints.append(f"an entry \"{netloc}\" under \"api_keys\" in {KEYS_FILE.name}")
    return ApiKey(None, " or ".join(hints))


# --------------------------------------------------------------------------- #
# HTTP.
# --------------------------------------------------------------------------- #


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow redirects: they would carry the API key to another URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401, ANN001
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _http_hint(code: int, key: ApiKey) -> str:
    if code in (401, 403):
        return f"check {key.source}"
    if code == 404:
        return "check base_url (and the model name)"
    if code == 429:
        return "rate limited or out of credits; wait and retry, or check your plan"
    if 300 <= code < 400:
        return "the endpoint redirected; redirects are not followed (use the final URL as base_url)"
    if code >= 500:
        return "the service failed; retry later"
    return "the request was rejected"


def _body_snippet(raw: bytes, limit: int = 300) -> str:
    text = raw.decode("utf-8", errors="replace").strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def post_json(url: str, body: dict, headers: dict[str, str], *, timeout: float, key: ApiKey) -> Any:
    """POST ``body`` as JSON and return the decoded JSON reply; failures become clear ValueErrors."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
        headers={"Content-Type": "application/json", "Accept": "application/json",
                 "User-Agent": "ComfyUI-Ideogram4-Native", **headers},
        method="POST",
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            raw = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        try:
            detail = _body_snippet(exc.read(2000))
        except (OSError, http.client.HTTPException):
            detail = ""
        detail = f" ({detail})" if detail else ""
        raise ValueError(f"Magic Prompt: HTTP {exc.code} from {url} — {_http_hint(exc.code, key)}{detail}") from None
    except (TimeoutError, socket.timeout):
        raise ValueError(f"Magic Prompt: no reply from {url} within {timeout:g} s (timeout); "
                         "retry, or raise timeout_s") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (TimeoutError, socket.timeout)):
            raise ValueError(f"Magic Prompt: no reply from {url} within {timeout:g} s (timeout)") from None
        raise ValueError(f"Magic Prompt: cannot reach {url}: {exc.reason} — check base_url and that the "
                         "server is running") from None
    except (http.client.HTTPException, OSError) as exc:
        raise ValueError(f"Magic Prompt: connection to {url} failed: {exc}") from None
    if len(raw) > MAX_RESPONSE_BYTES:
        raise ValueError(f"Magic Prompt: reply from {url} is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"Magic Prompt: {url} did not return JSON: {_body_snippet(raw)!r}") from None


# --------------------------------------------------------------------------- #
# Providers.
# --------------------------------------------------------------------------- #


def _chat(endpoint: Endpoint, key: ApiKey, messages: list[dict], *, seed: int | None, timeout: float) -> str:
    body: dict[str, Any] = {"model": endpoint.model, "messages": messages, "max_tokens": MAX_TOKENS,
                            "temperature": 1.0}
    if seed is not None:
        body["seed"] = int(seed)
    headers = {"Authorization": f"Bearer {key.value}"} if key.value else {}
    reply = post_json(endpoint.url, body, headers, timeout=timeout, key=key)
    try:
        choice = reply["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        snippet = _body_snippet(json.dumps(reply).encode())
        raise ValueError(f"Magic Prompt: {endpoint.url} returned no chat message: {snippet}") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        raise ValueError(f"Magic Prompt: {endpoint.url} returned an empty message (finish_reason {reason!r})")
    return content


def _ideogram(endpoint: Endpoint, key: ApiKey, prompt: str, width: int, height: int, *, timeout: float) -> str:
    if not key.value:
        raise ValueError(f"Magic Prompt: the Ideogram endpoint needs an API key — set {key.source}")
    body = {"text_prompt": prompt, "aspect_ratio": aspect_ratio(width, height).replace(":", "x")}
    reply = post_json(endpoint.url, body, {"Api-Key": key.value}, timeout=timeout, key=key)
    caption = reply.get("json_prompt") if isinstance(reply, dict) else None
    if isinstance(caption, str) and caption.strip():
        return caption
    if not isinstance(caption, dict) or not caption:
        raise ValueError(f"Magic Prompt: {endpoint.url} returned no json_prompt: "
                         f"{_body_snippet(json.dumps(reply).encode())}")
    return json.dumps(caption, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------- #
# Post-processing and the public entry point.
# --------------------------------------------------------------------------- #


def finish_reply(reply: str, *, keep_bboxes: bool = True) -> CaptionReport:
    """Validate a provider's reply (fences stripped, ``aspect_ratio`` dropped, bboxes kept or removed)."""
    return check_caption(reply, dialect="magic_prompt", drop_bboxes=not keep_bboxes)


def _note_aspect_ratio(report: CaptionReport, width: int, height: int) -> None:
    """Warn when the model planned its boxes for another aspect ratio than the target."""
    planned = report.aspect_ratio
    if not isinstance(planned, str):
        return
    parts = planned.lower().replace("x", ":").split(":")
    try:
        w, h = (float(p) for p in parts)
    except ValueError:
        return
    if w > 0 and h > 0 and abs((w / h) / (width / height) - 1) > 0.02:
        report.warnings.append(f"$.aspect_ratio: the model planned for {planned} but the target is "
                               f"{aspect_ratio(width, height)}; check that the boxes still fit")


@dataclass
class MagicPromptResult:
    caption: str
    report: CaptionReport
    attempts: int
    replies: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> bool:
        return self.attempts > 1


def expand(prompt: str, width: int, height: int, *, provider: str, base_url: str = "", model: str = "",
           keep_bboxes: bool = True, seed: int | None = None, timeout: float = DEFAULT_TIMEOUT_S,
           env: Mapping[str, str] | None = None, keys_file: Path | None = None) -> MagicPromptResult:
    """Turn ``prompt`` into a canonical caption for a ``width`` x ``height`` image.

    Raises ValueError for configuration, network and HTTP problems, and
    CaptionError when the reply is still invalid after one repair.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("Magic Prompt: the prompt is empty; write the image idea in plain words")
    aspect_ratio(width, height)  # validates the size
    if provider == "none":
        raise ValueError(_NOT_CONFIGURED)
    config = load_keys_file(keys_file)
    endpoint = resolve_endpoint(provider, base_url, model, env=env, config=config)
    key = resolve_api_key(endpoint, env=env, config=config)

    if endpoint.provider == "ideogram":
        reply = _ideogram(endpoint, key, prompt, width, height, timeout=timeout)
        report = finish_reply(reply, keep_bboxes=keep_bboxes)
        _note_aspect_ratio(report, width, height)
        if report.errors:  # the hosted endpoint takes no instructions, so there is nothing to repair with
            raise CaptionError(report, "Magic Prompt: the Ideogram endpoint returned an invalid caption")
        return MagicPromptResult(report.canonical, report, 1, [reply])

    if not key.value and _host(endpoint.url)[0] in VENDOR_KEY_ENV:
        raise ValueError(f"Magic Prompt: no API key for {_host(endpoint.url)[1]} — set {key.source}")
    messages = [{"role": "system", "content": system_prompt()},
                {"role": "user", "content": user_message(prompt, width, height)}]
    replies = [_chat(endpoint, key, messages, seed=seed, timeout=timeout)]
    report = finish_reply(replies[0], keep_bboxes=keep_bboxes)
    if report.errors:
        messages += [{"role": "assistant", "content": replies[0]},
                     {"role": "user", "content": repair_message(report.errors)}]
        replies.append(_chat(endpoint, key, messages, seed=seed, timeout=timeout))
        report = finish_reply(replies[1], keep_bboxes=keep_bboxes)
        if report.errors:
            raise CaptionError(report, "Magic Prompt: the model's caption is still invalid after one repair")
    _note_aspect_ratio(report, width, height)
    return MagicPromptResult(report.canonical, report, len(replies), replies)
