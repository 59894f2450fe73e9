"""`fade serve`'s HTTP API in-process (FastAPI TestClient) with the tiny golden model and a bank built from it."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import GOLDEN, MODEL_CONFIG, QUERIES, TINY_MODEL_ARGS, WEIGHTS  # noqa: E402
from fade_cli.bank.calibration import Thresholds  # noqa: E402
from fade_cli.cli import cli  # noqa: E402
from fade_cli.core.errors import ModelError  # noqa: E402
from fade_cli.runs.serve.app import ApiSettings, create_app  # noqa: E402
from fade_cli.runs.serve.archive import Archive  # noqa: E402
from fade_cli.runs.serve.service import InspectionService, ServedBank, ServiceSettings  # noqa: E402

ARGS = [*TINY_MODEL_ARGS, "--scales", "240", "--cls-size", "240",
        "--cls-prompts", GOLDEN / "prompts" / "cls.json", "--seg-prompts", GOLDEN / "prompts" / "seg.json"]
QUERY_FILES = sorted(QUERIES.glob("*.png"))


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def detect_rows(images, bank_file) -> dict[str, dict]:
    result = run(["detect", images, "--bank", bank_file, "--format", "jsonl", "-q", *TINY_MODEL_ARGS])
    assert result.exit_code in (0, 1), result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {row["path"]: row for row in rows}


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "widget.fadebank"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        result = run(["bank", "build", GOLDEN / "images" / "refs2", "--out", path, "--class", "widget", "-q",
                      "--pixel-threshold", "0.5", *ARGS])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def served(bank_file):
    """The bank's engine, loaded once for the module, as `fade serve --bank` loads it."""
    from fade_cli.bank.bank import load_bank
    from fade_cli.cli.engine_setup import bank_thresholds, engines_for_banks
    from fade_cli.cli.console import stderr_console

    bank = load_bank(bank_file)
    config = bank.config.replace(weights=str(WEIGHTS), model_config=str(MODEL_CONFIG), device="cpu")
    [engine] = engines_for_banks([(bank, config, str(bank_file))], stderr_console(), quiet=True)
    return ServedBank("widget", engine, bank_thresholds(bank, str(bank_file), Thresholds()).thresholds, str(bank_file))


def service_for(banks, **settings) -> InspectionService:
    archive = settings.pop("archive", None)
    loader = banks if callable(banks) else (lambda: list(banks))
    return InspectionService(loader, ServiceSettings(**settings), archive=archive)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wait_ready(client, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the service never became ready"
        time.sleep(0.05)


@pytest.fixture
def client_for():
    """Opens TestClients (lifespan started, ready) and closes them after the test."""
    opened = []

    def open_client(service, wait=True, **api):
        client = TestClient(create_app(service, ApiSettings(**api)))
        client.__enter__()
        opened.append(client)
        if wait:
            wait_ready(client)
        return client

    yield open_client
    for client in opened:
        client.__exit__(None, None, None)


def metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def answer_row(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key not in ("bank", "timings")}


def test_answers_equal_fade_detect_rows_bit_for_bit(served, bank_file, client_for):
    expected = detect_rows(QUERIES, bank_file)
    client = client_for(service_for([served]))
    for path in QUERY_FILES:
        response = client.post("/v1/detect", params={"name": path.name}, content=path.read_bytes())
        assert response.status_code == 200, response.text
        assert answer_row(response.json()) == expected[path.name]
    assert {row["verdict"] for row in expected.values()} == {"NG"}  # the tiny model finds every query odd
    assert any(row["regions"] for row in expected.values())


def test_multipart_answers_each_image_in_order(served, bank_file, client_for):
    expected = detect_rows(QUERIES, bank_file)
    client = client_for(service_for([served]))
    files = [("images", (path.name, path.read_bytes(), "image/png")) for path in QUERY_FILES]
    response = client.post("/v1/detect", files=files, params={"bank": "widget"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [answer_row(r) for r in results] == [expected[path.name] for path in QUERY_FILES]
    assert all(r["bank"] == "widget" and r["timings"]["batch_size"] >= 1 for r in results)


def sixteen_images() -> list[Image.Image]:
    """Sixteen different images: the golden queries, mirrored, flipped and rotated."""
    bases = [Image.open(path).convert("RGB") for path in QUERY_FILES]
    variants = [lambda im: im, ImageOps.mirror, ImageOps.flip, lambda im: im.rotate(90, expand=True)]
    return [change(base) for base in bases for change in variants]


@pytest.mark.slow
def test_sixteen_concurrent_clients_share_one_forward_pass_and_get_their_own_result(served, client_for):
    images = sixteen_images()
    alone = [served.engine.detect([image])[0].score for image in images]
    assert len(set(alone)) == 16
    client = client_for(service_for([served], max_batch=16, max_wait_s=10.0))
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(
            lambda item: client.post("/v1/detect", params={"name": f"img{item[0]}.png"}, content=png_bytes(item[1])),
            enumerate(images)))
    assert [r.status_code for r in responses] == [200] * 16
    answers = [r.json() for r in responses]
    assert [a["path"] for a in answers] == [f"img{i}.png" for i in range(16)]
    assert [a["score"] for a in answers] == alone  # bit-equal: the batch it shared changes nothing
    assert {a["timings"]["batch_size"] for a in answers} == {16}
    assert metric(client, "fade_batch_size_count") == 1
    assert metric(client, "fade_batch_size_sum") == 16
    assert metric(client, 'fade_images_scored_total{bank="widget"}') == 16


def test_max_batch_one_scores_one_image_per_pass(served, client_for):
    client = client_for(service_for([served], max_batch=1, max_wait_s=1.0))
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda path: client.post("/v1/detect", content=path.read_bytes()), QUERY_FILES))
    assert [r.status_code for r in responses] == [200] * 4
    assert metric(client, "fade_batch_size_count") == 4 and metric(client, "fade_batch_size_sum") == 4


def gate_scoring(service: InspectionService) -> tuple[threading.Event, threading.Event]:
    """Hold the worker inside its next batch until the returned ``release`` is set."""
    entered, release = threading.Event(), threading.Event()
    score = service.batcher.score

    def held(bank, inputs):
        entered.set()
        assert release.wait(30)
        return score(bank, inputs)

    service.batcher.score = held
    return entered, release


def test_overload_gives_503_with_retry_after_and_every_accepted_request_is_answered(served, client_for):
    service = service_for([served], max_batch=1, max_wait_s=0, max_queue=2)
    client = client_for(service)
    entered, release = gate_scoring(service)
    body = QUERY_FILES[0].read_bytes()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(client.post, "/v1/detect", content=body)
        assert entered.wait(30)
        queued = [pool.submit(client.post, "/v1/detect", content=body) for _ in range(2)]
        deadline = time.monotonic() + 30
        while service.batcher.depth < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = client.post("/v1/detect", content=body)
        assert metric(client, "fade_queue_depth") == 2
        release.set()
        accepted = [first.result(60)] + [f.result(60) for f in queued]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["detail"]
    assert [r.status_code for r in accepted] == [200] * 3
    assert len({r.json()["score"] for r in accepted}) == 1
    assert metric(client, 'fade_http_requests_total{route="/v1/detect",status="503"}') == 1


def test_timeout_gives_504_and_the_server_goes_on(served, client_for):
    service = service_for([served], max_batch=1, max_wait_s=0, timeout_s=0.3)
    client = client_for(service)
    entered, release = gate_scoring(service)
    body = QUERY_FILES[0].read_bytes()
    response = client.post("/v1/detect", content=body)
    assert response.status_code == 504 and "--timeout" in response.json()["detail"]
    release.set()
    service.settings.timeout_s = 120  # a loaded CI machine may need more than 0.3 s for a forward pass
    assert client.post("/v1/detect", content=body).status_code == 200


def test_a_failing_engine_answers_500_with_a_message_and_the_server_goes_on(served, client_for):
    service = service_for([served])
    client = client_for(service)
    score = service.batcher.score
    service.batcher.score = lambda bank, inputs: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
    response = client.post("/v1/detect", content=QUERY_FILES[0].read_bytes())
    assert response.status_code == 500
    assert response.json() == {"detail": "the engine failed: CUDA out of memory"}
    service.batcher.score = score
    assert client.post("/v1/detect", content=QUERY_FILES[0].read_bytes()).status_code == 200


@pytest.mark.parametrize("make_request, status, words", [
    (lambda c: c.post("/v1/detect", content=b"not an image at all"), 422, "not a readable image"),
    (lambda c: c.post("/v1/detect", content=b""), 422, "empty file"),
    (lambda c: c.post("/v1/detect", content=QUERY_FILES[0].read_bytes()[:300]), 422, "image"),
    (lambda c: c.post("/v1/detect", params={"bank": "nut"}, content=b"x"), 404, "no bank named 'nut'"),
    (lambda c: c.post("/v1/detect", content=b"x" * 5000), 413, "over the limit of 4096 bytes"),
    (lambda c: c.post("/v1/detect", files=[("a", ("a.png", b"x" * 3000)), ("b", ("b.png", b"y" * 3000))]),
     413, "over the limit"),
    (lambda c: c.post("/v1/detect", data={"note": "hello"}, files=[("a", ("a.png", b"x"))]), 400, "multipart"),
    (lambda c: c.post("/v1/detect", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
     400, "multipart"),
    (lambda c: c.post("/v1/detect", params={"heatmap": "jpg"}, content=b"x"), 422, None),
    (lambda c: c.get("/v1/nothing"), 404, None),
])
def test_bad_requests_get_their_status_and_a_reason(served, client_for, make_request, status, words):
    client = client_for(service_for([served]), max_bytes=4096)
    response = make_request(client)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    if words is not None:
        assert words in response.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_several_banks_need_a_name(served, client_for):
    other = ServedBank("nut", served.engine, served.thresholds, "nut.fadebank")
    client = client_for(service_for([served, other]))
    response = client.post("/v1/detect", content=QUERY_FILES[0].read_bytes())
    assert response.status_code == 400 and "nut, widget" in response.json()["detail"]
    assert client.post("/v1/detect", params={"bank": "nut"}, content=QUERY_FILES[0].read_bytes()).json()["bank"] == "nut"
    assert [b["name"] for b in client.get("/v1/banks").json()["banks"]] == ["widget", "nut"]


def test_banks_describe_class_model_and_thresholds(served, client_for):
    [bank] = client_for(service_for([served])).get("/v1/banks").json()["banks"]
    assert bank["name"] == "widget" and bank["class"] == "widget" and bank["references"] == 2
    assert bank["model"]["model"] == "fade-golden" and len(bank["model"]["weights_sha256"]) == 64
    assert bank["thresholds"]["image"] == pytest.approx(served.thresholds.image)
    assert bank["thresholds"]["pixel"] == 0.5 and bank["thresholds"]["pixel_source"] == "given"


def test_heatmap_and_map_are_added_when_asked_for(served, client_for):
    client = client_for(service_for([served]))
    path = QUERY_FILES[1]
    response = client.post("/v1/detect", params={"heatmap": "png", "map": "npy"}, content=path.read_bytes())
    answer = response.json()
    width, height = Image.open(path).size
    heatmap = Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"])))
    assert heatmap.format == "PNG" and heatmap.height == height and heatmap.width > width  # colour scale on the right
    anomaly_map = np.load(io.BytesIO(base64.b64decode(answer["map_npy"])), allow_pickle=False)
    assert anomaly_map.shape == (height, width) and anomaly_map.dtype == np.float32
    plain = client.post("/v1/detect", content=path.read_bytes()).json()
    assert "heatmap_png" not in plain and "map_npy" not in plain


def test_the_token_is_required_when_configured(served, client_for):
    client = client_for(service_for([served]), token="s3cret-token")
    body = QUERY_FILES[0].read_bytes()
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
        response = client.post("/v1/detect", content=body, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert client.get("/metrics").status_code == 401 and client.get("/v1/banks").status_code == 401
    good = {"Authorization": "Bearer s3cret-token"}
    assert client.post("/v1/detect", content=body, headers=good).status_code == 200
    assert client.get("/metrics", headers=good).status_code == 200


def test_not_ready_while_loading_then_ready(served, client_for):
    loading = threading.Event()

    def slow_loader():
        assert loading.wait(30)
        return [served]

    client = client_for(service_for(slow_loader), wait=False)
    assert client.get("/healthz").json() == {"status": "starting"}
    assert client.get("/readyz").status_code == 503
    response = client.post("/v1/detect", content=QUERY_FILES[0].read_bytes())
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    loading.set()
    wait_ready(client)
    assert client.post("/v1/detect", content=QUERY_FILES[0].read_bytes()).status_code == 200
    assert metric(client, "fade_ready") == 1


def test_a_failed_load_is_reported_and_never_ready(client_for):
    def broken():
        raise ModelError("cannot load weights x.pt")

    failures = []
    service = service_for(broken)
    service.on_failure = failures.append
    client = client_for(service, wait=False)
    deadline = time.monotonic() + 10
    while not failures:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert str(failures[0]) == "cannot load weights x.pt"
    assert client.get("/readyz").json() == {"status": "failed"}


def test_draining_turns_not_ready_and_refuses_new_work(served, client_for):
    service = service_for([served])
    client = client_for(service)
    service.drain()
    assert client.get("/readyz").json() == {"status": "draining"}
    assert client.post("/v1/detect", content=QUERY_FILES[0].read_bytes()).status_code == 503


def test_the_archive_keeps_images_and_rows_that_rescore_the_same(served, bank_file, client_for, tmp_path):
    archive = tmp_path / "archive"
    client = client_for(service_for([served], archive=Archive(archive)))
    answers = [client.post("/v1/detect", params={"name": f"../../{path.name}"}, content=path.read_bytes()).json()
               for path in QUERY_FILES[:2]]
    files = [("images", ("x.png", QUERY_FILES[2].read_bytes()))]
    answers += client.post("/v1/detect", files=files).json()["results"]
    rows = [json.loads(line) for line in (archive / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    images = sorted(p.relative_to(archive / "images").as_posix() for p in (archive / "images").rglob("*.png"))
    assert sorted(row["path"] for row in rows) == images
    assert all(".." not in row["path"] for row in rows)
    assert [row["score"] for row in rows] == [a["score"] for a in answers]
    rescored = detect_rows(archive / "images", bank_file)
    assert {path: rescored[path]["score"] for path in images} == {row["path"]: row["score"] for row in rows}


def test_openapi_schema_describes_the_api(served, client_for):
    schema = client_for(service_for([served])).get("/openapi.json").json()
    assert {"/v1/detect", "/v1/banks", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    content = schema["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert {"image/*", "multipart/form-data"} <= set(content)


def test_a_bounded_schemathesis_run_finds_no_server_error(served):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.python import asgi

    app = create_app(service_for([served]), ApiSettings(max_bytes=64 * 1024))
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.app = app
    checked = []
    with asgi.get_client(app) as client:  # one lifespan: the service loads once
        deadline = time.monotonic() + 60
        while client.get("http://localhost/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for result in schema.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def no_server_error(case):
                response = case.call(session=client)
                checked.append((operation.path, response.status_code))
                assert response.status_code < 500, (case, response.text)

            no_server_error()
    assert {path for path, _ in checked} >= {"/v1/detect", "/v1/banks", "/readyz", "/metrics", "/healthz"}
    assert any(path == "/v1/detect" and 400 <= status < 500 for path, status in checked)  # refused, with a reason


def test_a_client_that_goes_away_is_dropped_from_the_queue_and_holds_up_no_one(served):
    import asyncio

    from fade_cli.runs.serve.service import ClientGone, Upload

    service = service_for([served], max_batch=1, max_wait_s=0)
    service.start()
    deadline = time.monotonic() + 60
    while service.state != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    entered, release = gate_scoring(service)
    upload = Upload("a.png", QUERY_FILES[0].read_bytes())

    async def scenario():
        first = asyncio.create_task(service.detect(served, [upload]))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        gone = asyncio.Event()
        leaving = asyncio.create_task(service.detect(served, [upload], client_gone=gone.wait))
        while service.batcher.depth < 1:
            await asyncio.sleep(0.01)
        gone.set()
        with pytest.raises(ClientGone):
            await leaving
        staying = asyncio.create_task(service.detect(served, [upload]))
        release.set()
        return await first, await staying

    try:
        first, staying = asyncio.run(scenario())
    finally:
        release.set()
        service.stop(30)
    assert first[0]["score"] == staying[0]["score"]
    assert service.metrics.registry.get_sample_value("fade_batch_size_count") == 2  # the leaver's job: never scored


def test_banks_of_one_model_share_one_loaded_model(bank_file):
    from fade_cli.bank.bank import load_bank
    from fade_cli.cli.engine_setup import engines_for_banks
    from fade_cli.cli.console import stderr_console

    bank = load_bank(bank_file)
    config = bank.config.replace(weights=str(WEIGHTS), model_config=str(MODEL_CONFIG), device="cpu")
    first, second = engines_for_banks([(bank, config, "a"), (bank, config, "b")], stderr_console(), quiet=True)
    assert first is not second and first.loaded is second.loaded


def test_an_archive_that_cannot_be_written_fails_the_request_with_a_reason(served, client_for, tmp_path):
    archive = Archive(tmp_path / "archive")
    client = client_for(service_for([served], archive=archive))
    (tmp_path / "archive" / "images").write_text("a file where the images folder should be")
    response = client.post("/v1/detect", content=QUERY_FILES[0].read_bytes())
    assert response.status_code == 500 and "could not be archived" in response.json()["detail"]
    assert not (tmp_path / "archive" / "results.jsonl").exists()


def test_an_image_over_max_pixels_is_refused_from_its_header(served, client_for):
    client = client_for(service_for([served], max_pixels=100_000))
    large = png_bytes(Image.new("L", (1000, 1000)))  # a megapixel in a few kilobytes
    response = client.post("/v1/detect", content=large)
    assert response.status_code == 413
    assert response.json()["detail"] == "image: 1000x1000 is over the limit of 100000 pixels per image"
    assert client.post("/v1/detect", content=QUERY_FILES[0].read_bytes()).status_code == 413  # 288x384 > 100000


def test_a_stop_while_the_model_loads_never_turns_ready(served):
    loading = threading.Event()
    service = service_for(lambda: (loading.wait(30), [served])[1])
    service.start()
    service.drain()
    loading.set()
    assert service.stop(60)
    assert service.state == "draining"
    assert service.metrics.registry.get_sample_value("fade_ready") == 0


def test_every_route_but_the_probes_needs_the_token(served, client_for):
    client = client_for(service_for([served]), token="s3cret-token")
    open_paths = {"/healthz", "/readyz"}
    routes = [(method, route.path) for route in client.app.routes for method in getattr(route, "methods", ())]
    assert ("GET", "/openapi.json") in routes and len(routes) >= 6
    for method, path in routes:
        response = client.request(method, path)
        assert (response.status_code == 401) == (path not in open_paths), (method, path, response.status_code)
    assert client.get("/docs").status_code == 401 and client.get("/nothing").status_code == 401
    schema = client.get("/openapi.json", headers={"Authorization": "Bearer s3cret-token"}).json()
    assert schema["paths"]["/v1/detect"]["post"]["security"] == [{"bearer": []}]
    assert schema["paths"]["/healthz"]["get"]["security"] == []


def test_too_many_parts_is_413_naming_the_limit(served, client_for):
    client = client_for(service_for([served], max_queue=2))
    body = QUERY_FILES[0].read_bytes()
    response = client.post("/v1/detect", files=[(name, (f"{name}.png", body)) for name in "abc"])
    assert response.status_code == 413, response.text
    assert "3 parts" in response.json()["detail"] and "limit of 2" in response.json()["detail"]
    two = client.post("/v1/detect", files=[(name, (f"{name}.png", body)) for name in "ab"])
    assert two.status_code == 200 and len(two.json()["results"]) == 2


@pytest.fixture
def decodes(monkeypatch):
    """Counts the images decoded by the service."""
    import fade_cli.runs.serve.service as service_module

    counted = []
    prepare = service_module._prepare

    def counting(engine, upload, max_pixels):
        counted.append(upload.label)
        return prepare(engine, upload, max_pixels)

    monkeypatch.setattr(service_module, "_prepare", counting)
    return counted


def test_pixels_over_the_bound_are_refused_from_the_headers_before_decoding(served, client_for, decodes):
    client = client_for(service_for([served], max_pixels_in_flight=60_000_000))
    buffer = io.BytesIO()
    Image.new("1", (7000, 7000)).save(buffer, format="PNG")  # 49 megapixels in a few kilobytes
    parts = [(name, (f"{name}.png", buffer.getvalue())) for name in "ab"]
    response = client.post("/v1/detect", files=parts)
    assert response.status_code == 413, response.text
    assert "98000000 pixels" in response.json()["detail"]
    assert "limit of 60000000 decoded pixels in flight" in response.json()["detail"]
    assert decodes == []


def test_while_the_pixels_in_flight_are_full_others_get_503_before_decoding(served, client_for, decodes):
    # The first request waits 3 s in the queue for a companion, its pixels held; the second does not fit beside it.
    width, height = Image.open(QUERY_FILES[0]).size
    client = client_for(service_for([served], max_batch=8, max_wait_s=3.0,
                                    max_pixels_in_flight=width * height * 3 // 2))
    body = QUERY_FILES[0].read_bytes()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/detect", content=body, params={"name": "first"})
        deadline = time.monotonic() + 30
        while metric(client, "fade_queue_depth") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        second = client.post("/v1/detect", content=body, params={"name": "second"})
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert "pixels in flight" in second.json()["detail"]
        assert first.result().status_code == 200
    assert decodes == ["first"]
    assert client.post("/v1/detect", content=body).status_code == 200  # released


def test_the_queue_admits_images_before_they_are_decoded(served, client_for, decodes):
    client = client_for(service_for([served], max_batch=8, max_wait_s=3.0, max_queue=2))
    body = QUERY_FILES[0].read_bytes()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/detect", files=[(n, (f"{n}.png", body)) for n in "ab"])
        deadline = time.monotonic() + 30
        while metric(client, "fade_queue_depth") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = client.post("/v1/detect", content=body, params={"name": "late"})
        assert refused.status_code == 503 and "queue is full" in refused.json()["detail"]
        assert first.result().status_code == 200
    assert sorted(decodes) == ["a.png", "b.png"]  # the refused image was never decoded


def test_a_client_that_leaves_mid_upload_is_counted_as_499(served, client_for):
    import asyncio

    client = client_for(service_for([served]))
    messages = iter([{"type": "http.request", "body": b"\x89PNG", "more_body": True}, {"type": "http.disconnect"}])
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/detect", "raw_path": b"/v1/detect", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"image/png"), (b"content-length", b"100000")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 499
    text = client.get("/metrics").text
    assert 'fade_http_requests_total{route="/v1/detect",status="499"} 1.0' in text
    assert 'status="500"' not in text
