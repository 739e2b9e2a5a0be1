"""The operator page "EDS network" in a real Airflow API server, opened in headless Chromium.

The API server loads `plugins/eds_network_ui.py` from the embedded stack's plugins folder and reads a fresh
catalogue (EDS_CATALOGUE_DSN) seeded through the catalogue module. The screenshots are saved under
`tests/artifacts/` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from ui_catalogue import DEMO_MILESTONES, EXTRA_MILESTONES, seed_ui_catalogue

from eds_network import catalogue, ui
from eds_network.catalogue import milestone_records, shacl
from eds_network.core.config import load_network
from eds_network.dev.reference_bases import REFERENCE_BASES

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = os.environ.get("EDS_CHROMIUM", "/usr/bin/chromium")


def _expected_milestones(network) -> dict[str, dict[str, str | None]]:
    out = {}
    for b in network.local_bases:
        got = {**DEMO_MILESTONES, **EXTRA_MILESTONES.get(b.id, {})}
        out[b.id] = {m: got[m].isoformat() if m in got else None for m in catalogue.MILESTONES}
    for r in REFERENCE_BASES:
        out[r.id] = {m: r.milestones[m].isoformat() if m in r.milestones else None for m in catalogue.MILESTONES}
    return out


def _http(url: str, *, token: str | None = None, data: dict | None = None, accept: str = "application/json"):
    headers = {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = None
    if data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def ui_db(stack):
    name = "t_ui_catalogue"
    dsn = stack.create_database(name, drop=True)
    seeded = seed_ui_catalogue(dsn, load_network())
    yield dsn, seeded
    import psycopg

    catalogue.engine(dsn).dispose()
    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


DOCS_BASE = "hosp_c"  # a generated hospital, resized small: its real extraction builds the Data Docs


@pytest.fixture(scope="module")
def data_docs(stack, ui_db):
    """The real local pipeline step for two tables of hosp_c (extract, DQD checks, GX Data Docs), recording its
    quality results in the page's catalogue as the local DAG does. Returns the configured Data Docs root."""
    import uuid

    from eds_network import quality
    from eds_network.dev import seed
    from eds_network.local import extract

    dsn, _ = ui_db
    net = load_network().resized(DOCS_BASE, 40)
    base = net.base(DOCS_BASE)
    start = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    src = stack.create_database("t_ui_docs_src", drop=True)
    seed.seed_base(src, net, DOCS_BASE, (start, start + dt.timedelta(days=1)))
    res = stack.local_resources(net, DOCS_BASE, source_dsn=src, intake_prefix=f"test-ui-{uuid.uuid4().hex[:8]}/")
    recorder = quality.catalogue_recorder(dsn, dag_run_id="manual__ui_docs")
    for table in ("person", "visit_occurrence"):
        extract.extract_table(base, table, start, start + dt.timedelta(days=1), res, on_checks=recorder)
    yield stack.root / "datadocs"
    import psycopg

    with psycopg.connect(stack.dsn("postgres"), autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "t_ui_docs_src" WITH (FORCE)')


@pytest.fixture(scope="module")
def api_server(stack, ui_db, data_docs):
    """`airflow api-server` of the embedded stack on its API port, with our plugin; yields (base URL, token)."""
    dsn, _ = ui_db
    env = {**os.environ, **stack.airflow_env(), "EDS_CATALOGUE_DSN": dsn, "EDS_DATA_DOCS_DIR": str(data_docs)}
    stack.logs.mkdir(parents=True, exist_ok=True)
    log = stack.logs / "api-server-ui-test.log"
    airflow = Path(sys.executable).parent / "airflow"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(airflow), "api-server", "--host", "127.0.0.1", "--port", str(stack.api_port), "--workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{stack.api_port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"airflow api-server exited ({proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
            try:
                if _http(f"{base}/api/v2/monitor/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"airflow api-server not up on {base} within 240s; see {log}")
            time.sleep(1)
        passwords = json.loads((stack.secrets_dir / "ui_passwords.json").read_text())
        status, body = _http(f"{base}/auth/token", data={"username": "admin", "password": passwords["admin"]})
        assert status in (200, 201), body
        yield base, json.loads(body)["access_token"]
    finally:
        with contextlib.suppress(ProcessLookupError):  # it exited already: the failure above says why
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}: run `make browser-deps`")
        pytest.skip(f"no Chromium at {CHROMIUM}: run `make browser-deps`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_view_model_flags_quality_out_of_order_milestones_and_lead_times(ui_db):
    dsn, seeded = ui_db
    view = ui.network_view(dsn, load_network())
    bases = {b["id"]: b for b in view["bases"]}
    assert bases["hosp_b"]["levels"]["local"]["quality"] == "warn"  # 3 rows quarantined
    assert bases["hosp_a"]["levels"]["local"]["quality"] == "ok"
    assert bases["hosp_a"]["out_of_order"] == ["transfer_channel"]
    assert bases["ref_oscour"]["out_of_order"] == ["transfer_channel"]
    assert bases["ref_bndmr"]["out_of_order"] == []
    assert bases["hosp_d"]["levels"]["national"] is None  # onco not delivered yet
    assert bases["hosp_a"]["levels"]["national"]["status"] == "success"
    assert bases["ref_bndmr"]["lead_time"]["state"] == "within" and bases["ref_bndmr"]["lead_time"]["days"] == 196
    assert bases["ref_esme"]["lead_time"]["state"] == "over"
    assert bases["ref_bndmr"]["levels"] == {}  # reference bases do not flow through this network
    assert [d["id"] for d in view["deliveries"]] == [seeded["deliveries"]["idf"]]
    assert view["deliveries"][0]["receipt"] == "accepted"
    actions = {a["action"] for a in view["audit"]}
    assert {"delivery.received", "run.national.success"} <= actions
    assert view["audit"][0]["id"] > view["audit"][-1]["id"]  # newest first
    json.dumps(view)  # the JSON API serves it as is


def test_plugin_reads_the_catalogue_through_the_airflow_connection(stack):
    """Without the EDS_CATALOGUE_DSN override, the plugin resolves `eds_catalogue` through Airflow's secrets."""
    env = {k: v for k, v in {**os.environ, **stack.airflow_env()}.items() if k != "EDS_CATALOGUE_DSN"}
    code = "import eds_network_ui as p; print(p._dsn())"
    plugins = str(Path(__file__).resolve().parents[2] / "plugins")
    res = subprocess.run(
        [sys.executable, "-c", code], env={**env, "PYTHONPATH": plugins}, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == stack.dsn("catalogue")


def test_json_api_needs_airflow_authentication(api_server):
    base, token = api_server
    status, _ = _http(f"{base}/eds/api/network")
    assert status in (401, 403)
    status, _ = _http(f"{base}/eds/api/network", token="not-a-jwt")
    assert status in (401, 403)
    status, body = _http(f"{base}/eds/api/network", token=token)
    assert status == 200
    view = json.loads(body)
    network = load_network()
    assert {b["id"] for b in view["bases"]} == {b.id for b in network.local_bases} | {r.id for r in REFERENCE_BASES}
    status, body = _http(f"{base}/eds/api/audit?limit=5", token=token)
    assert status == 200 and len(json.loads(body)) == 5
    status, body = _http(f"{base}/eds/api/bases/ref_oscour", token=token)
    assert status == 200 and json.loads(body)["stage"] == "available"
    assert _http(f"{base}/eds/api/bases/no_such_base", token=token)[0] == 404
    status, body = _http(f"{base}/eds/api/bases/ref_bndmr/healthdcat", token=token)
    assert status == 200 and "dcat:Dataset" in body.decode()
    status, body = _http(f"{base}/eds/api/catalog/healthdcat", token=token)
    assert status == 200 and shacl.validate(body.decode()).conforms
    # the plugin is registered with Airflow: FastAPI app and the external view in the navigation
    status, body = _http(f"{base}/api/v2/plugins", token=token)
    plugin = next(p for p in json.loads(body)["plugins"] if p["name"] == "eds_network_ui")
    assert plugin["external_views"][0]["href"] == "/eds/" and plugin["fastapi_apps"][0]["url_prefix"] == "/eds"


def _internal_links(html: str) -> list[str]:
    """Relative links of a GX Data Docs page: href/src, and the row links of GX's index table (opened by its
    script on a click). GX's own CDN assets and anchors are left out, and so is the favicon of validation pages,
    which GX 1.x writes one folder too shallow (`../../../../static/…`): GX's bug, not a serving one."""
    links = re.findall(r"""(?:href|src)=["']([^"'#]+)["']""", html)
    links += re.findall(r"""_table_row_link_path['"]: ['"]([^'"]+)['"]""", html)
    return sorted(
        {u for u in links if not re.match(r"^(?:[a-z]+:|//)", u) and not u.endswith("static/images/favicon.ico")}
        | {u for u in links if u == "./static/images/favicon.ico"}
    )


def test_data_docs_are_linked_and_served_as_gx_builds_them(api_server):
    base, token = api_server
    bases = {b["id"]: b for b in json.loads(_http(f"{base}/eds/api/bases", token=token)[1])}
    docs = bases[DOCS_BASE]["links"]["data_docs_tables"]
    assert set(docs) == {"person", "visit_occurrence"}
    assert docs["person"] == f"/eds/data-docs/local/{DOCS_BASE}/person/index.html"
    assert bases["hosp_b"]["links"]["data_docs"] is None and bases["hosp_b"]["links"]["data_docs_tables"] == {}
    # every internal link of the index, and of one page it links to, is served
    status, body = _http(f"{base}{docs['person']}", token=token, accept="text/html")
    assert status == 200
    index_links = _internal_links(body.decode())
    assert any("validations/" in u for u in index_links), index_links
    page = urllib.parse.urljoin(f"{base}{docs['person']}", next(u for u in index_links if "validations/" in u))
    checked = [urllib.parse.urljoin(f"{base}{docs['person']}", u) for u in index_links]
    status, inner = _http(page, token=token, accept="text/html")
    assert status == 200
    checked += [urllib.parse.urljoin(page, u) for u in _internal_links(inner.decode())]
    broken = [u for u in checked if _http(u, token=token)[0] != 200]
    assert broken == [] and len(checked) > 2
    assert _http(f"{base}{docs['person']}")[0] in (401, 403)
    assert _http(f"{base}/eds/data-docs/local/no_such_base/person/index.html", token=token)[0] == 404
    assert _http(f"{base}/eds/data-docs/..%2F..%2Fsecrets/ui_passwords.json", token=token)[0] == 404


def test_unauthenticated_browser_is_sent_to_the_airflow_login(api_server, browser):
    base, _ = api_server
    page = browser.new_page()
    page.goto(f"{base}/eds/")
    assert "/auth/login" in page.url
    assert "EDS network" not in page.title()
    page.close()


def test_operator_page_shows_every_base_with_its_milestones(api_server, browser):
    base, token = api_server
    network = load_network()
    expected = _expected_milestones(network)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1500, "height": 1000})
    ctx.add_cookies([{"name": "_token", "value": token, "url": base}])
    page = ctx.new_page()
    resp = page.goto(f"{base}/eds/")
    assert resp is not None and resp.status == 200
    assert page.title() == "EDS network"
    assert page.locator("header h1").inner_text() == "EDS network"

    # every base of the catalogue in the milestones timeline, with its five milestones
    rows = page.locator("#milestones tr[data-base]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.base)")) == sorted(expected)
    for base_id, milestones in expected.items():
        row = page.locator(f"#milestones tr[data-base='{base_id}']")
        for m, day in milestones.items():
            cell = row.locator(f"[data-milestone='{m}'] .date")
            assert cell.inner_text() == (day or "not reached"), (base_id, m)
        reached = {m for m, d in milestones.items() if d}
        assert row.get_attribute("data-stage") == catalogue.stage(reached), base_id
    assert page.locator("#milestones tr[data-base='ref_oscour']").inner_text().count("reached out of order") == 1
    assert (
        page.locator("#milestones tr[data-base='ref_esme'] [data-lead-state]").get_attribute("data-lead-state")
        == "over"
    )

    # every network base x level, linked to its DAG runs
    for b in network.local_bases:
        row = page.locator(f"#levels tr[data-base='{b.id}']")
        assert row.locator("td[data-level='local']").get_attribute("data-status") == "success"
        assert row.locator(f"a[href='/dags/{b.dag_id}/runs']").count() == 1
    # the EHDS data quality and utility label of each network base, next to its levels, as the API gives it
    for b in network.local_bases:
        status, body = _http(f"{base}/eds/api/bases/{b.id}/quality-label", token=token)
        cell = page.locator(f"#levels tr[data-base='{b.id}'] td.label")
        if status == 404:
            assert cell.get_attribute("data-label") == "none", b.id
            continue
        lab = json.loads(body)
        for k in ("completeness", "conformance", "plausibility"):
            want = "n/a" if lab[k] is None else f"{100 * lab[k]:.1f}%"
            assert cell.locator(f"[data-element='{k}'] b").inner_text() == want, (b.id, k)
        if lab["coverage"]["persons"] is not None:
            persons = cell.locator("[data-element='coverage'] b").inner_text()
            assert re.sub(r"\D", "", persons) == str(lab["coverage"]["persons"]), b.id
    docs_cell = page.locator(f"#levels tr[data-base='{DOCS_BASE}'] td.label")
    assert docs_cell.locator("[data-element='completeness'] b").inner_text().endswith("%")  # real DQD results
    assert docs_cell.locator(f"a[href='/eds/api/bases/{DOCS_BASE}/quality-label']").count() == 1
    docs_link = page.locator(f"#levels tr[data-base='{DOCS_BASE}'] a[data-docs-table='person']")
    assert docs_link.count() == 1
    assert page.locator("#levels tr[data-base='hosp_b'] td[data-level='local'] .chip.warn").count() == 1
    assert "no run yet" in page.locator("#levels tr[data-base='hosp_d'] td[data-level='national']").inner_text()
    assert page.locator("#deliveries tr[data-delivery]").count() == 1
    assert "accepted" in page.locator("#deliveries").inner_text()
    assert "delivery.received" in page.locator("#audit").inner_text()
    page.screenshot(path=str(ARTIFACTS / "eds_network_ui.png"), full_page=True)
    charts = page.locator(f"#quality-over-time .trend[data-base='{DOCS_BASE}']")
    assert charts.locator("figure.chart svg").count() == 3
    page.locator("#quality-over-time").screenshot(path=str(ARTIFACTS / "eds_quality_trends.png"))

    # a real Data Docs link of the page, then one link inside GX's Data Docs
    docs_link.click()
    page.wait_for_load_state()
    assert page.url.endswith(f"/eds/data-docs/local/{DOCS_BASE}/person/index.html")
    # GX's index lists its validation runs in a table its script draws (row link `_table_row_link_path`)
    row_link = re.search(r"_table_row_link_path['\"]: ['\"]([^'\"]+)['\"]", page.content()).group(1)
    resp = page.goto(urllib.parse.urljoin(page.url, row_link))
    assert resp is not None and resp.status == 200 and "/validations/" in page.url
    page.screenshot(path=str(ARTIFACTS / "eds_data_docs_validation.png"))
    with page.expect_navigation():
        page.locator("a[href*='expectations/']").first.click()  # a link inside the validation page
    assert page.url.endswith(f"/eds/data-docs/local/{DOCS_BASE}/person/expectations/{DOCS_BASE}/person.html")
    assert "404" not in page.title() and page.locator("body").inner_text().strip()

    # the same page as a view inside the Airflow UI (navigation entry "EDS network")
    page.goto(f"{base}/plugin/eds-network")
    frame = page.frame_locator("iframe").first
    frame.locator("#milestones tr[data-base='ref_e_must']").wait_for(timeout=60_000)
    assert page.get_by_text("EDS network").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "eds_network_ui_in_airflow.png"))
    ctx.close()
    assert (ARTIFACTS / "eds_network_ui.png").stat().st_size > 10_000


def test_no_internet_asset_on_the_page(api_server):
    base, token = api_server
    status, body = _http(f"{base}/eds/", token=token, accept="text/html")
    assert status == 200
    text = body.decode()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert '<link rel="stylesheet" href="/eds/static/eds.css">' in text
    status, css = _http(f"{base}/eds/static/eds.css", token=token)
    assert status == 200 and b"--ok:" in css and b"http" not in css
    assert _http(f"{base}/eds/static/eds.css")[0] in (401, 403)  # behind the login like the page
    assert _http(f"{base}/eds/static/..%2Fview.py", token=token)[0] == 404


# -- the milestone form: a delivery held back by the national gate, unblocked from the page ----------------------


def _national_run(stack, dsn: str, platform, target) -> dict:
    """One national run of `platform`, as `eds_national`'s tasks do it (national_tasks.transfer then .receipt),
    on a test outbox prefix and this page's catalogue: milestones read from the catalogue, the gate, the transfer,
    the receipt recorded (an accepted one sets `available`)."""
    from test_transfer import _resources

    from eds_network.national import receipt as receipt_step
    from eds_network.national import transfer as transfer_step
    from eds_network.orchestration import national_tasks

    reached = {b.id: set(catalogue.milestones(dsn, b.id)) for b in platform.members}
    res = _resources(stack)
    out = transfer_step.transfer_platform(platform, target, res, milestones=reached)
    national_tasks.record_gate(dsn, out)
    if out.status == "delivered":
        doc = receipt_step.receipt(target, res.landing, out.delivery_id)
        assert national_tasks.record_receipt(
            dsn, [b.id for b in platform.members], out.ref(), doc, run_id="manual__ui_milestone"
        )
    return out.ref()


@pytest.fixture(scope="module")
def held_onco(stack, ui_db):
    """onco's package in a test outbox, and a national run the gate skipped: hosp_d lacks `preparation`."""
    import uuid

    from test_transfer import _package, _platform, _tokens

    dsn, _ = ui_db
    tag = uuid.uuid4().hex[:10]
    network = load_network()
    zone = network.national.landing_zone.model_copy(update={"prefix": f"t-ui-{tag}/"})
    target = network.national.model_copy(update={"landing_zone": zone})
    platform = _platform("onco", tag)
    _package(stack, platform, _tokens(12))
    out = _national_run(stack, dsn, platform, target)
    assert out["status"] == "skipped" and out["skipped"] == {"hosp_d": ["preparation"]}
    return platform, target


def _form_post(base: str, fields: dict, *, cookie: str | None = None, token: str | None = None, origin=None):
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if origin:
        headers["Origin"] = origin
    req = urllib.request.Request(
        f"{base}/eds/milestones", data=urllib.parse.urlencode(fields).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_milestone_form_refuses_forgeries_and_bad_input(api_server, ui_db):
    base, token = api_server
    dsn, _ = ui_db
    ok = {"base": "ref_e_sis", "milestone": "preparation", "date": "2023-02-01", "evidence": "HDH catalogue 2023"}
    before = catalogue.milestones(dsn, "ref_e_sis")
    # the session cookie alone (what a forged cross-site form carries) is not enough: the token bound to it is needed
    assert _form_post(base, ok, cookie=token)[0] == 403
    assert _form_post(base, {**ok, "csrf_token": "0" * 64}, cookie=token)[0] == 403
    assert (
        _form_post(base, {**ok, "csrf_token": ui.app.csrf_token(token)}, cookie=token, origin="https://evil.example")[0]
        == 403
    )
    assert _form_post(base, ok)[0] in (401, 403)  # no login at all
    assert catalogue.milestones(dsn, "ref_e_sis") == before
    # unknown base or milestone, future date: a clear error, nothing written
    status, body = _form_post(base, {**ok, "base": "hosp_zz"}, token=token)
    assert status == 400 and "unknown base 'hosp_zz'" in body["detail"]
    status, body = _form_post(base, {**ok, "milestone": "signed"}, token=token)
    assert status == 400 and "[base=ref_e_sis] unknown milestone 'signed'" in body["detail"]
    status, body = _form_post(base, {**ok, "date": "2999-01-01"}, token=token)
    assert status == 400 and "in the future" in body["detail"]
    status, body = _form_post(base, {**ok, "evidence": "call jean.dupont@chu.fr"}, token=token)
    assert status == 400 and "direct identifier" in body["detail"] and "jean.dupont" not in body["detail"]
    assert catalogue.milestones(dsn, "ref_e_sis") == before
    # with the token bound to the session cookie (the page's own form), it records, under the user's name
    status, body = _form_post(base, {**ok, "csrf_token": ui.app.csrf_token(token)}, cookie=token)
    assert status == 200 and body["action"] == "milestone.set", body
    got = catalogue.milestones(dsn, "ref_e_sis")
    assert got["preparation"] == dt.date(2023, 2, 1)


def test_an_operator_records_the_missing_milestone_on_the_page_and_the_next_national_run_delivers(
    api_server, browser, ui_db, held_onco, stack
):
    from test_transfer import _manifests

    base, token = api_server
    dsn, _ = ui_db
    platform, target = held_onco
    ctx = browser.new_context(viewport={"width": 1500, "height": 1000})
    ctx.add_cookies([{"name": "_token", "value": token, "url": base}])
    page = ctx.new_page()
    page.goto(f"{base}/eds/")
    # the page shows the skip, naming the platform, the base and the milestone, and offers to record it
    held = page.locator(
        "#held tr[data-held-platform='onco'][data-held-base='hosp_d'][data-held-milestone='preparation']"
    )
    assert held.count() == 1
    assert "Preparation" in held.inner_text()
    page.locator("#held").screenshot(path=str(ARTIFACTS / "eds_held_delivery.png"))
    held.locator("input[name='evidence']").fill("Preparation minutes CHU-D 2026-11, ref. ONCO-PREP-7")
    with page.expect_navigation():
        held.locator("button[type='submit']").click()
    assert "/eds/?recorded=hosp_d.preparation" in page.url
    notice = page.locator("#milestone-notice").inner_text()
    assert "Preparation of hosp_d reached on" in notice and "by admin" in notice
    # recorded under the logged-in Airflow user, audited
    got = milestone_records.current_milestones(dsn, "hosp_d")["preparation"]
    assert got["recorded_by"] == "admin" and got["evidence"].startswith("Preparation minutes CHU-D")
    assert got["reached_on"] == dt.date.today().isoformat()
    a = catalogue.audit_t
    with catalogue.engine(dsn).connect() as conn:
        entry = conn.execute(
            a.select().where(a.c.action == "milestone.set", a.c.object == "base:hosp_d").order_by(a.c.id.desc())
        ).first()
    assert entry.actor == "admin" and entry.details["milestone"] == "preparation"
    held = page.locator("#held tr[data-held-base='hosp_d'][data-held-milestone='preparation']")
    assert "the next national run delivers" in held.inner_text()
    assert "milestone.set" in page.locator("#audit").inner_text()

    # the next national run passes the gate and delivers; the accepted receipt makes hosp_d available
    out = _national_run(stack, dsn, platform, target)
    assert out["status"] == "delivered" and len(_manifests(stack, target)) == 1
    assert "available" in catalogue.milestones(dsn, "hosp_d")
    page.reload()
    assert page.locator("#held tr[data-held-platform='onco']").count() == 0
    assert page.locator(f"#deliveries tr[data-delivery='{out['delivery_id']}']").count() == 1
    assert page.locator("#levels tr[data-base='hosp_d'] td[data-level='national']").get_attribute("data-status") == (
        "success"
    )
    row = page.locator("#milestones tr[data-base='hosp_d']")
    assert row.locator("[data-milestone='available'] .date").inner_text() == dt.date.today().isoformat()
    assert row.locator("[data-lead-state]").get_attribute("data-lead-state") in ("within", "over")  # no longer pending
    page.screenshot(path=str(ARTIFACTS / "eds_milestone_recorded.png"), full_page=True)
    ctx.close()


def test_a_feasibility_question_asked_on_the_page_triggers_the_dag_through_the_rest_api(stack, api_server, ui_db):
    """The plugin's own trigger: the form's question recorded (requested, by the Airflow user) and a run of
    `eds_project_feasibility` created through Airflow's REST API with its request id and cohort."""
    from eds_network.catalogue import feasibility_requests

    base, token = api_server
    dsn, _ = ui_db
    stack.airflow("dags", "reserialize")  # the API server triggers only DAGs it knows (no DAG processor here)
    form = {"name": "page-q", "table": "condition_occurrence", "concepts": "201826", "descendants": "on"}
    form |= {"start": "2000-01-01", "end": "2027-01-01", "k": "11"}
    req = urllib.request.Request(
        f"{base}/eds/projects/feasibility",
        data=urllib.parse.urlencode(form).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        out = json.loads(resp.read())
    rid = out["request_id"]
    (asked,) = [q for q in feasibility_requests.requests(dsn) if q["id"] == rid]
    assert out["run_id"] and asked["run_id"] == out["run_id"], asked["detail"]
    assert asked["requested_by"] == "admin" and asked["status"] == "requested"
    run_url = f"{base}/api/v2/dags/eds_project_feasibility/dagRuns/{urllib.parse.quote(out['run_id'])}"
    status, body = _http(run_url, token=token)
    assert status == 200, body
    conf = json.loads(body)["conf"]
    assert conf["request_id"] == rid and json.loads(conf["cohort_json"])["name"] == "page-q"
    html = _http(f"{base}/eds/projects", token=token, accept="text/html")[1].decode()
    assert f"data-request='{rid}' data-status='requested'" in html
    # no scheduler here: the run stays queued; leave nothing for a later one
    urllib.request.urlopen(
        urllib.request.Request(run_url, method="DELETE", headers={"Authorization": f"Bearer {token}"}), timeout=30
    )
