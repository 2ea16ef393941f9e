"""openai-python's conventions, checked against the real ``openai`` package: the base URL
from the environment, extra headers and query parameters, status errors users can catch;
and ``predict`` rebuilding the provider a decoder was fitted with."""

from __future__ import annotations

import json
import logging
import pickle
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

import maas_tune
from maas_tune.cli import build_parser, main
from maas_tune.errors import ConfigurationError, ProviderStatusError
from maas_tune.providers.chat import OpenAIChatProvider
from maas_tune.providers.embeddings import OpenAIEmbeddingsProvider
from maas_tune.providers.http import request_json
from maas_tune.providers.openai import OpenAICompletionsProvider
from tests._det_server import DetServer

openai = pytest.importorskip("openai")
ROOT = Path(__file__).resolve().parents[2]
STATUSES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "InternalServerError",
}
SECRET = "azure-key-0123456789abcdef"


# -- status errors --------------------------------------------------------------------
def _answering(status: int) -> httpx.MockTransport:
    body = {"error": {"message": "no", "type": "some_error"}}
    return httpx.MockTransport(lambda request: httpx.Response(status, json=body))


@pytest.mark.parametrize("status", sorted(STATUSES))
def test_each_status_raises_the_class_openai_python_raises(status):
    client = httpx.Client(base_url="http://api.test/v1/", transport=_answering(status))
    with client, pytest.raises(ProviderStatusError) as ours:
        request_json(client, "POST", "completions", json={})
    sdk = openai.OpenAI(
        api_key="sk-test",
        base_url="http://api.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=_answering(status)),
    )
    with pytest.raises(openai.APIStatusError) as theirs:
        sdk.completions.create(model="m", prompt="x")
    assert type(ours.value).__name__ == type(theirs.value).__name__ == STATUSES[status]
    assert ours.value.status_code == theirs.value.status_code == ours.value.status == status
    assert type(ours.value) is getattr(maas_tune, STATUSES[status])  # exported at the top


def test_other_statuses_stay_plain_and_errors_survive_pickling():
    client = httpx.Client(base_url="http://api.test/v1/", transport=_answering(413))
    with client, pytest.raises(ProviderStatusError) as plain:
        request_json(client, "POST", "completions", json={})
    assert type(plain.value) is ProviderStatusError and plain.value.status_code == 413
    client = httpx.Client(base_url="http://api.test/v1/", transport=_answering(429))
    with client, pytest.raises(maas_tune.RateLimitError) as limited:
        request_json(client, "POST", "completions", json={})
    copy = pickle.loads(pickle.dumps(limited.value))  # Ray and multiprocessing send errors
    assert type(copy) is maas_tune.RateLimitError
    assert (copy.status_code, copy.error_type, str(copy)) == (429, "some_error", str(limited.value))


def test_a_provider_raises_the_subclass_through_its_retries():
    provider = OpenAIEmbeddingsProvider(
        "http://api.test/v1", "m", api_key="sk-test", transport=_answering(401), max_retries=0
    )
    with pytest.raises(maas_tune.AuthenticationError) as err:
        provider.embed(["hello"])
    assert isinstance(err.value, maas_tune.ProviderError) and err.value.status_code == 401


# -- base URL from the environment ------------------------------------------------------
def test_base_url_none_reads_the_environment_as_openai_python_does(monkeypatch):
    monkeypatch.delenv("MAAS_TUNE_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8001/v1")
    assert str(openai.OpenAI(api_key="sk-test").base_url).rstrip("/") == "http://127.0.0.1:8001/v1"
    for cls in (OpenAICompletionsProvider, OpenAIChatProvider, OpenAIEmbeddingsProvider):
        assert cls(None, "m", api_key="sk-test").base_url == "http://127.0.0.1:8001/v1"
    monkeypatch.setenv("MAAS_TUNE_BASE_URL", "http://127.0.0.1:8002/v1")  # ours first
    assert OpenAICompletionsProvider(None, "m").base_url == "http://127.0.0.1:8002/v1"


def test_base_url_none_without_the_environment_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("MAAS_TUNE_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match=r"\$OPENAI_BASE_URL are unset; pass base_url="):
        OpenAICompletionsProvider(None, "m")


# -- extra headers and query parameters ----------------------------------------------------
class _Recorder(BaseHTTPRequestHandler):
    """Records each request's headers and query; answers an OpenAI embeddings reply."""

    seen: ClassVar[list[tuple[dict[str, str], dict[str, str]]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.seen.append(
            (
                {k.lower(): v for k, v in self.headers.items()},
                dict(parse_qsl(urlsplit(self.path).query)),
            )
        )
        reply = {
            "object": "list",
            "model": body.get("model"),
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }
        payload = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder():
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Recorder.seen
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_headers_and_query_reach_the_server_as_with_openai_python(recorder):
    url, seen = recorder
    headers = {"OpenAI-Organization": "org-123", "HTTP-Referer": "https://example.org"}
    query = {"api-version": "2024-10-21"}
    sdk = openai.OpenAI(
        api_key="sk-test", base_url=url, default_headers=headers, default_query=query, max_retries=0
    )
    sdk.embeddings.create(model="m", input=["hello"])
    OpenAIEmbeddingsProvider(
        url, "m", api_key="sk-test", default_headers=headers, default_query=query
    ).embed(["hello"])
    (theirs_h, theirs_q), (ours_h, ours_q) = seen
    assert ours_q == theirs_q == query
    for name, value in headers.items():
        assert ours_h[name.lower()] == theirs_h[name.lower()] == value
    assert ours_h["authorization"] == theirs_h["authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("cls", [OpenAICompletionsProvider, OpenAIChatProvider])
def test_scoring_providers_send_them_with_every_request(cls):
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        text = json.loads(request.content).get("input")
        return httpx.Response(200, json={"tokens": [7] if text else []})

    provider = cls(
        "http://api.test/v1",
        "m",
        api_key="sk-test",
        transport=httpx.MockTransport(answer),
        default_headers={"OpenAI-Project": "proj-1"},
        default_query={"api-version": "1"},
    )
    provider.label_token_ids(["good"])  # asks the tokenizer endpoint
    assert requests and all(r.headers["openai-project"] == "proj-1" for r in requests)
    assert all(r.url.params["api-version"] == "1" for r in requests)


def test_a_credential_header_never_reaches_messages_or_logs(caplog):
    echo = httpx.MockTransport(
        lambda request: httpx.Response(
            401, json={"error": {"message": f"bad key {request.headers['api-key']}"}}
        )
    )
    provider = OpenAIEmbeddingsProvider(
        "http://api.test/v1",
        "m",
        transport=echo,
        default_headers={"api-key": SECRET},
        max_retries=0,
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(maas_tune.AuthenticationError) as err:
        provider.embed(["hello"])
    logging.getLogger("maas_tune.test").warning("header was %s", SECRET)
    assert SECRET not in str(err.value) and SECRET not in caplog.text
    assert "[REDACTED]" in caplog.text


def test_bad_headers_are_refused_without_showing_a_credential():
    with pytest.raises(ConfigurationError, match="not a valid HTTP header name"):
        OpenAIEmbeddingsProvider("http://api.test/v1", "m", default_headers={"a b": "x"})
    with pytest.raises(ConfigurationError) as err:
        OpenAIEmbeddingsProvider(
            "http://api.test/v1", "m", default_headers={"api-key": SECRET + "\r\nX: y"}
        )
    assert SECRET not in str(err.value) and "line breaks" in str(err.value)


# -- the CLI: --base-url env, --header, --query, predict's provider ---------------------------
@pytest.fixture
def det():
    with DetServer() as server:
        yield server


def _fit(tmp_path: Path, *flags: str) -> Path:
    out = tmp_path / "decoder"
    argv = [
        "fit",
        "--dataset",
        "sst2",
        "--shots",
        "2",
        "--cache",
        str(tmp_path / "fit.sqlite"),
        "--out",
        str(out),
        "--quiet",
        "--api-model",
        "det",
        *flags,
    ]
    assert main(argv) == 0
    return out


def _predict(tmp_path: Path, decoder: Path, *flags: str) -> int:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "a joyous film"}\n', encoding="utf-8")
    return main(
        [
            "predict",
            "--decoder",
            str(decoder),
            "--input",
            str(inputs),
            "--quiet",
            "--cache",
            str(tmp_path / "predict.sqlite"),
            *flags,
        ]
    )


def test_cli_base_url_env_says_which_url_and_predict_reuses_the_fitted_api(
    det, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("MAAS_TUNE_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", det.base_url)
    decoder = _fit(tmp_path, "--base-url", "env", "--header", "X-Title:maas")
    assert f"using base URL {det.base_url} from $OPENAI_BASE_URL" in capsys.readouterr().err
    monkeypatch.delenv("OPENAI_BASE_URL")
    before = det.received
    assert _predict(tmp_path, decoder) == 0  # no --base-url: the fitted API, not the local model
    captured = capsys.readouterr()
    assert det.received > before and "warning" not in captured.err
    assert json.loads(captured.out)["prediction"] in ("negative", "positive")
    meta = json.loads((decoder / "decoder.json").read_text())["metadata"]
    assert meta["model"] == "det"  # the model asked of the API, not --model's default
    assert meta["provider_config"]["headers"] == {"X-Title": "maas"}


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--api-model", "other"], "the model is 'other'"),
        (["--base-url", "http://127.0.0.1:9/v1"], "--base-url is http://127.0.0.1:9/v1"),
        (["--api", "chat"], "--api is chat"),
    ],
)
def test_predict_refuses_another_provider_unless_allowed(det, tmp_path, capsys, flags, named):
    decoder = _fit(tmp_path, "--base-url", det.base_url)
    capsys.readouterr()
    before = det.received
    assert _predict(tmp_path, decoder, *flags) == 1
    err = capsys.readouterr().err
    assert named in err and "--allow-provider-mismatch" in err and err.count("\n") == 1
    assert det.received == before  # refused before any request
    if flags[0] == "--api-model":
        assert _predict(tmp_path, decoder, *flags, "--allow-provider-mismatch") == 0
        assert "provider mismatch allowed" in capsys.readouterr().err


def test_predict_of_a_decoder_without_a_record_warns_and_uses_the_flags(det, tmp_path, capsys):
    decoder = _fit(tmp_path, "--base-url", det.base_url)
    saved = decoder / "decoder.json"
    doc = json.loads(saved.read_text())
    del doc["metadata"]["provider_config"]  # as maas-tune <= 0.x saved it
    doc["metadata"]["model"] = "gemma3-270m"
    saved.write_text(json.dumps(doc))
    capsys.readouterr()
    assert _predict(tmp_path, decoder, "--base-url", det.base_url, "--api-model", "det") == 0
    assert "older maas-tune and does not record its provider" in capsys.readouterr().err


def test_a_locally_fitted_decoder_refuses_an_api():
    from maas_tune.cli.provider import apply_record

    args = build_parser().parse_args(
        ["predict", "--decoder", "d", "--input", "i", "--base-url", "http://127.0.0.1:9/v1"]
    )
    meta = {"provider_config": {"kind": "local", "model": "gemma3-270m"}}
    with pytest.raises(ConfigurationError, match="fitted with the local model 'gemma3-270m'"):
        apply_record(args, meta)


@pytest.mark.parametrize("record", [{"kind": "ftp"}, {"kind": "chat", "base_url": 5}])
def test_a_damaged_record_is_one_clear_error(record):
    from maas_tune.cli.provider import apply_record

    args = build_parser().parse_args(["predict", "--decoder", "d", "--input", "i"])
    with pytest.raises(ConfigurationError, match="metadata.provider_config is damaged"):
        apply_record(args, {"provider_config": record})


def test_cli_leaves_an_unused_base_url_variable_alone_and_says_so(monkeypatch, capsys):
    from maas_tune.cli.provider import resolve_cli_base_url

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    args = build_parser().parse_args(["eval", "--dataset", "sst2"])
    resolve_cli_base_url(args)
    assert args.base_url is None  # still the local model: no paid request by surprise
    assert "$OPENAI_BASE_URL is set but not used" in capsys.readouterr().err


def test_cli_header_and_query_flags_are_checked():
    assert main(["eval", "--dataset", "sst2", "--header", "X-Title:a"]) == 1  # needs --base-url
    args = ["eval", "--dataset", "sst2", "--base-url", "http://127.0.0.1:9/v1", "--query", "x"]
    assert main(args) == 1


# -- docs ------------------------------------------------------------------------------
def test_http_docs_example_runs(recorder, monkeypatch):
    url, seen = recorder
    text = (ROOT / "docs" / "http.md").read_text(encoding="utf-8")
    section = text[text.index("## Headers, query parameters") :]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.delenv("MAAS_TUNE_BASE_URL", raising=False)
    namespace: dict[str, Any] = {}
    exec(compile(block, "docs/http.md", "exec"), namespace)  # noqa: S102 - the docs' example
    assert seen and seen[0][1] == {"api-version": "2024-10-21"}


def test_quickstart_comment_counts_the_queries_its_decoder_needs():
    source = (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8")
    sent = int(re.search(r"first run sends (\d+) queries", source).group(1))
    shots = int(re.search(r"sample_k_shot\(data\.train, (\d+)", source).group(1))
    assert "mt.DecT(" in source and sent == 2 * shots  # SST-2: 2 classes; no content-free query


def test_predict_paces_as_fit_did_unless_told_otherwise(det, tmp_path):
    """--rate-limit and --max-concurrency are kept with the fitted provider (issue 18)."""
    from maas_tune.cli.provider import apply_record

    decoder = _fit(
        tmp_path, "--base-url", det.base_url, "--rate-limit", "3000/min", "--max-concurrency", "32"
    )
    meta = json.loads((decoder / "decoder.json").read_text())["metadata"]
    assert meta["provider_config"]["rate_limit_per_minute"] == 3000.0
    assert meta["provider_config"]["max_concurrency"] == 32
    args = build_parser().parse_args(["predict", "--decoder", "d", "--input", "i"])
    apply_record(args, meta)
    assert args.rate_limit.requests_per_minute == 3000.0 and args.max_concurrency == 32
    args = build_parser().parse_args(
        ["predict", "--decoder", "d", "--input", "i", "--rate-limit", "10/s"]
    )
    apply_record(args, meta)
    assert args.rate_limit.requests_per_minute == 600.0  # a flag given wins
    assert _predict(tmp_path, decoder) == 0
