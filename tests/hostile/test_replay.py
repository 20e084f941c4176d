"""A replay of malformed and abusive requests against a live local Serve app.

Each gets the documented 4xx JSON envelope within 2 s, while a good job submitted first keeps running beside
them and succeeds, no replica restarts (worker pids before and after), and a `.part` symlink planted in the
output root does not redirect the job's output.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.hostile.conftest import AUTH, TOKEN
from tests.hostile.replicas import replica_pids
from tests.serve.conftest import assert_error, wait_terminal

pytestmark = pytest.mark.ray

ANSWER_WITHIN_S = 2.0
JSON = {"Content-Type": "application/json", **AUTH}
VICTIM_TEXT = "must not be overwritten"


@dataclass
class Ctx:
    client: httpx.Client  # with the token
    anon: httpx.Client  # without
    job_id: str  # the good job, running beside the replay
    media: dict[str, Path]
    video: Path
    url: str


@dataclass
class Case:
    name: str
    send: Callable[[Ctx], httpx.Response]
    status: int
    code: str | None
    body: bool = True  # HEAD answers carry no body


def form(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> tuple[bytes, dict]:
    """A hand-made multipart body: (field, file name or None, value) per part."""
    out = bytearray()
    for name, filename, value in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += (
            f"Content-Disposition: {disposition}\r\n\r\n".encode("utf-8", "surrogateescape") + value + b"\r\n"
        )
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), {"Content-Type": f"multipart/form-data; boundary={boundary}", **AUTH}


def post_form(parts, boundary: str = "b0undary") -> Callable[[Ctx], httpx.Response]:
    body, headers = form(parts, boundary)
    return lambda ctx: ctx.client.post("/reconstruct", content=body, headers=headers)


def post_json(payload: str | bytes) -> Callable[[Ctx], httpx.Response]:
    return lambda ctx: ctx.client.post("/reconstruct", content=payload, headers=JSON)


def post_file(field: str, key: str) -> Callable[[Ctx], httpx.Response]:
    def send(ctx: Ctx) -> httpx.Response:
        path = ctx.media[key]
        return ctx.client.post("/reconstruct", files={field: (path.name, path.read_bytes())})

    return send


def with_video(**fields) -> Callable[[Ctx], httpx.Response]:
    """The good video with hostile form fields: refused on the fields, so no job is created."""

    def send(ctx: Ctx) -> httpx.Response:
        return ctx.client.post(
            "/reconstruct", files={"video": ("v.mp4", ctx.video.read_bytes())}, data=fields
        )

    return send


def chunked_over_limit(ctx: Ctx) -> httpx.Response:
    def chunks():
        head, _ = form([("video", "big.mp4", b"")])
        yield head[: head.index(b"\r\n\r\n") + 4]
        for _ in range(5):
            yield bytes(1024**2)

    headers = {"Content-Type": "multipart/form-data; boundary=b0undary", **AUTH}
    return ctx.client.post("/reconstruct", content=chunks(), headers=headers)


def raw_http(request: bytes) -> Callable[[Ctx], httpx.Response]:
    """Send bytes httpx would refuse to send (a lying Content-Length) and read the answer."""

    def send(ctx: Ctx) -> httpx.Response:
        url = urlparse(ctx.url)
        with socket.create_connection((url.hostname, url.port), timeout=ANSWER_WITHIN_S) as sock:
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
        return httpx.Response(int(lines[0].split()[1]), headers=headers, content=body)

    return send


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def events(last_event_id: bytes) -> Callable[[Ctx], httpx.Response]:
    return lambda ctx: ctx.client.get(
        f"/reconstruct/events/{ctx.job_id}", headers={"Last-Event-ID": last_event_id}
    )


DEEP = "[" * 5000 + "]" * 5000
LONG_NAME = "a" * 256
CASES = [
    # bodies the parsers choke on
    Case("json nested 5000 deep", post_json(DEEP), 400, "malformed_json"),
    Case(
        "compare json nested 5000 deep",
        lambda ctx: ctx.client.post("/compare", content=DEEP, headers=JSON),
        400,
        "malformed_json",
    ),
    Case(
        "compare unknown jobs",
        lambda ctx: ctx.client.post("/compare", json={"reference": "A" * 22, "candidate": "B" * 22}),
        404,
        "job_not_found",
    ),
    Case("json value nested 5000 deep", post_json('{"num_frames": ' + DEEP + "}"), 400, "malformed_json"),
    Case("json NaN", post_json('{"source": "v.mp4", "num_frames": NaN}'), 400, "malformed_json"),
    Case(
        "json Infinity",
        post_json('{"source": "v.mp4", "foreground_ratio": -Infinity}'),
        400,
        "malformed_json",
    ),
    Case("json duplicate keys", post_json('{"source": "v.mp4", "source": "w.mp4"}'), 400, "malformed_json"),
    Case("json not an object", post_json("[1, 2]"), 400, "malformed_json"),
    Case("json not utf-8", post_json(b'{"source": "\xff\xfe"}'), 400, "malformed_json"),
    Case("json over 64 KB", post_json('{"source": "' + "a" * 70_000 + '"}'), 413, "payload_too_large"),
    Case("json huge integer", post_json('{"source": "v.mp4", "num_frames": 1' + "0" * 5000 + "}"), 400, None),
    Case(
        "multipart 300-char boundary",
        post_form([("num_frames", None, b"2")], "x" * 300),
        400,
        "malformed_multipart",
    ),
    Case(
        "multipart boundary with bad chars",
        post_form([("a", None, b"1")], "a{b}"),
        400,
        "malformed_multipart",
    ),
    Case(
        "multipart without boundary",
        lambda ctx: ctx.client.post(
            "/reconstruct", content=b"x", headers={"Content-Type": "multipart/form-data", **AUTH}
        ),
        400,
        "malformed_multipart",
    ),
    Case(
        "multipart garbage body",
        lambda ctx: ctx.client.post(
            "/reconstruct",
            content=b"garbage\r\n\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=b", **AUTH},
        ),
        400,
        "malformed_multipart",
    ),
    Case(
        "multipart truncated",
        lambda ctx: ctx.client.post(
            "/reconstruct", content=form([("video", "v.mp4", b"xx")])[0][:-20], headers=form([])[1]
        ),
        400,
        "malformed_multipart",
    ),
    Case(
        "multipart 20 KB part header",
        post_form([("video", "v" * 20_000 + ".mp4", b"x")]),
        400,
        "malformed_multipart",
    ),
    # wrong content types and methods
    Case(
        "text/plain body",
        lambda ctx: ctx.client.post(
            "/reconstruct", content=b"hi", headers={"Content-Type": "text/plain", **AUTH}
        ),
        415,
        "unsupported_media",
    ),
    Case(
        "no content type",
        lambda ctx: ctx.client.post("/reconstruct", content=b"hi"),
        415,
        "unsupported_media",
    ),
    Case(
        "form-urlencoded",
        lambda ctx: ctx.client.post("/reconstruct", data={"source": "v.mp4"}),
        415,
        "unsupported_media",
    ),
    Case("OPTIONS", lambda ctx: ctx.client.options("/reconstruct"), 405, "method_not_allowed"),
    Case("HEAD on a POST route", lambda ctx: ctx.client.head("/reconstruct"), 405, None, body=False),
    Case("HEAD without token", lambda ctx: ctx.anon.head("/jobs"), 401, None, body=False),
    Case("PUT on jobs", lambda ctx: ctx.client.put("/jobs"), 405, "method_not_allowed"),
    Case("unknown route", lambda ctx: ctx.client.get("/admin"), 404, "not_found"),
    # fields: duplicates, sizes, names, numbers, unknowns
    Case("duplicate form field", with_video(num_frames=["2", "3"]), 400, "invalid_input"),
    Case("huge form field", with_video(num_frames="9" * 100_000), 400, "invalid_input"),
    Case(
        "non-utf-8 file name, text content",
        post_form([("video", "\udcff\udcfe.mp4", b"just some text, not a video")]),
        415,
        "unsupported_media",
    ),
    Case(
        "256-char upload file name, text content",
        post_form([("file", LONG_NAME, b"text")]),
        415,
        "unsupported_media",
    ),
    Case("negative num_frames", with_video(num_frames="-1"), 422, "invalid_parameter"),
    Case("NaN foreground_ratio", with_video(foreground_ratio="nan"), 422, "invalid_parameter"),
    Case("inf object_size_m", with_video(object_size_m="inf"), 422, "invalid_parameter"),
    Case("unknown form field", with_video(colour="red"), 422, "invalid_parameter"),
    Case("unknown json field", post_json('{"source": "v.mp4", "colour": "red"}'), 422, "invalid_parameter"),
    Case("unknown file field", post_form([("evil", "v.mp4", b"x")]), 400, "invalid_input"),
    Case("empty file", post_form([("video", "v.mp4", b"")]), 400, "empty_file"),
    Case("no file at all", post_form([("num_frames", None, b"2")]), 400, "missing_input"),
    Case("source in a multipart form", with_video(source="v.mp4"), 400, "bad_request"),
    Case("source not a string", post_json('{"source": 5}'), 400, "invalid_input"),
    Case(
        "bad Idempotency-Key",
        lambda ctx: ctx.client.post(
            "/reconstruct", content=b"{}", headers={**JSON, "Idempotency-Key": "a b"}
        ),
        400,
        "bad_request",
    ),
    # path-like fields
    Case("256-char source name", post_json(json.dumps({"source": LONG_NAME})), 400, "invalid_input"),
    Case(
        "256-char output name",
        post_json(json.dumps({"source": "v.mp4", "output_glb_path": LONG_NAME})),
        400,
        "invalid_input",
    ),
    Case("source ../", post_json('{"source": "../../etc/passwd"}'), 403, "forbidden_path"),
    Case("source absolute outside", post_json('{"source": "/etc/passwd"}'), 403, "forbidden_path"),
    Case("source %2e%2e", post_json('{"source": "%2e%2e/%2e%2e/etc/passwd"}'), 403, "forbidden_path"),
    Case(
        "source fullwidth dots",
        post_json(json.dumps({"source": "\uff0e\uff0e/etc/passwd"})),
        403,
        "forbidden_path",
    ),
    Case(
        "source two-dot leader", post_json(json.dumps({"source": "\u2025/etc/passwd"})), 403, "forbidden_path"
    ),
    Case(
        "source backslash ..", post_json(json.dumps({"source": "..\\..\\etc\\passwd"})), 403, "forbidden_path"
    ),
    Case("source ~user", post_json('{"source": "~root/.ssh/id_rsa"}'), 400, "invalid_input"),
    Case("source NUL", post_json(json.dumps({"source": "v\u0000.mp4"})), 400, "invalid_input"),
    Case(
        "output ../", post_json('{"source": "v.mp4", "output_glb_path": "../x.glb"}'), 403, "forbidden_path"
    ),
    Case(
        "output absolute outside",
        post_json('{"source": "v.mp4", "output_glb_path": "/tmp/x.glb"}'),
        403,
        "forbidden_path",
    ),
    Case(
        "job id traversal",
        lambda ctx: ctx.client.get("/reconstruct/status/..%2f..%2fetc%2fpasswd"),
        404,
        None,
    ),
    Case("job id too short", lambda ctx: ctx.client.get("/reconstruct/result/abc"), 404, "job_not_found"),
    # SSE, auth
    Case(
        "SSE unknown id", lambda ctx: ctx.client.get("/reconstruct/events/" + "A" * 22), 404, "job_not_found"
    ),
    Case("SSE malformed id", lambda ctx: ctx.client.get("/reconstruct/events/%00%ff"), 404, "job_not_found"),
    Case("Last-Event-ID superscript two", events("²".encode()), 400, "bad_request"),
    Case("Last-Event-ID Arabic-Indic digits", events("١٢".encode()), 400, "bad_request"),
    Case("Last-Event-ID 40 digits", events(b"9" * 40), 400, "bad_request"),
    Case("no token", lambda ctx: ctx.anon.get("/jobs"), 401, "unauthorized"),
    Case(
        "wrong token",
        lambda ctx: ctx.anon.get("/jobs", headers={"Authorization": "Bearer nope"}),
        401,
        "unauthorized",
    ),
    Case(
        "non-ascii token",
        lambda ctx: ctx.anon.get("/jobs", headers={"Authorization": "Bearer é".encode()}),
        401,
        "unauthorized",
    ),
    Case("list with bad limit", lambda ctx: ctx.client.get("/jobs?limit=1e3"), 422, "invalid_parameter"),
    Case("list with bad state", lambda ctx: ctx.client.get("/jobs?state=%00"), 422, "invalid_parameter"),
    Case("cancel unknown", lambda ctx: ctx.client.delete("/jobs/" + "B" * 22), 404, "job_not_found"),
    # sizes and hostile media
    Case(
        "declared body over the limit",
        raw_http(
            b"POST /reconstruct HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=b0undary\r\nContent-Length: 999999999999\r\n\r\nxx"
        ),
        413,
        "payload_too_large",
    ),
    Case("chunked body over the limit", chunked_over_limit, 413, "payload_too_large"),
    Case("video header 16000x16000", post_file("video", "huge_avi"), 413, "video_too_large"),
    Case("video header 100000x100000", post_file("video", "huger_avi"), 422, "video_decode_error"),
    Case("zip claiming 1M members", post_file("archive", "million_zip"), 422, "unsafe_archive"),
    Case("zip with 20k members", post_file("archive", "many_zip"), 422, "unsafe_archive"),
    Case("zip bomb 200 MB", post_file("archive", "bomb_zip"), 422, "unsafe_archive"),
    Case(
        "HEIC photo",
        post_form([("file", "x.heic", b"\x00\x00\x00\x18ftypheic" + bytes(64))]),
        415,
        "unsupported_media",
    ),
]


@pytest.fixture(scope="module")
def ctx(live, hostile_media, good_video):
    """The good job, submitted before the replay, with a planted `.part` link in its output folder."""
    victim = live.base / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    (live.base / "outputs" / "good.glb.part").symlink_to(victim)
    (live.base / "inputs" / "v.mp4").write_bytes(good_video.read_bytes())
    pids = replica_pids()
    response = live.client.post(
        "/reconstruct",
        files={"video": ("ring.mp4", good_video.read_bytes())},
        data={"output_glb_path": "good.glb"},
    )
    assert response.status_code == 202, response.text
    with httpx.Client(base_url=live.url, timeout=30) as anon:
        yield (
            Ctx(live.client, anon, response.json()["job_id"], hostile_media, good_video, live.url),
            pids,
            victim,
        )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_gets_the_documented_4xx_fast(ctx, case):
    context, *_ = ctx
    started = time.monotonic()
    response = case.send(context)
    elapsed = time.monotonic() - started
    if case.body:
        assert_error(response, case.status, case.code)
    else:
        assert response.status_code == case.status
        assert response.headers["content-type"].startswith("application/json")
    assert elapsed < ANSWER_WITHIN_S, f"{case.name}: {elapsed:.2f}s"
    assert (
        "Traceback" not in response.text
        and "/tmp" not in response.text
        and str(Path.home()) not in response.text
    )


def test_websocket_with_a_bad_token_or_unknown_job_is_refused(ctx):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    context, *_ = ctx
    ws = urlparse(context.url)._replace(scheme="ws").geturl()
    for path, headers in (
        (f"/reconstruct/ws/{context.job_id}", {"Authorization": "Bearer wrong"}),
        ("/reconstruct/ws/" + "C" * 22, AUTH),
    ):
        started = time.monotonic()
        with pytest.raises(InvalidStatus) as refused:
            connect(ws + path, additional_headers=headers, open_timeout=ANSWER_WITHIN_S).close()
        assert refused.value.response.status_code == 403
        assert time.monotonic() - started < ANSWER_WITHIN_S


def test_client_disconnecting_mid_upload_leaves_no_folder_and_no_harm(ctx, live):
    context, *_ = ctx
    host, port = urlparse(context.url).hostname, urlparse(context.url).port
    head, _ = form([("video", "v.mp4", b"")])
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            b"POST /reconstruct HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=b0undary\r\nContent-Length: 3000000\r\n\r\n"
            + head[: head.index(b"\r\n\r\n") + 4] + bytes(300_000)
        )  # fmt: skip
        time.sleep(0.5)
    assert context.client.get("/healthz").status_code == 200
    deadline = time.monotonic() + 20  # the handler's cleanup, or else the orphan sweep (5 s, every 1 s)
    while True:
        strays = [p.name for p in (live.base / "data" / "jobs").iterdir()
                  if context.client.get(f"/jobs/{p.name}").status_code == 404]  # fmt: skip
        if not strays or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert strays == []


def test_readyz_without_token_says_only_ready(ctx):
    context, *_ = ctx
    assert context.anon.get("/readyz").json() == {"status": "ready"}
    assert "jobs" in context.client.get("/readyz").json()


def test_good_job_beside_the_replay_succeeds_and_no_replica_restarted(ctx, live):
    context, pids_before, victim = ctx
    doc = wait_terminal(context.client, context.job_id, timeout_s=300.0, poll_s=0.5)
    assert doc["state"] == "succeeded", doc
    output = live.base / "outputs" / "good.glb"
    assert output.is_file() and not output.is_symlink() and output.stat().st_size > 0
    assert victim.read_text() == VICTIM_TEXT  # the planted good.glb.part link was not written through
    assert replica_pids() == pids_before
    assert len(pids_before) >= 4  # Ingress, Preprocess, Reconstruct, Export
