"""The viewer on a real tiny run, read by the tables and looked at in headless Chromium.

The run is the one tests/test_workflow_e2e.py checks (the session fixture
``e2e_run`` of tests/fixtures/workflow.py: the real Snakefile on a tiny
config, a reference model trained for a few steps and a tiny random
Qwen2.5-VL), made once for both.

Then ``snakemake viewer`` builds the site, and:

- the pages' data (steps, per-token entropy, maps, alignment) are held
  against the tables and stores they come from;
- Debian's ``chromium`` (installed with apt when absent, as the SLURM test
  installs SLURM; skipped with the reason only where it cannot be) opens the
  site over ``file://`` through Selenium and chromedriver: it follows links
  from the home page to an index and an item page, sorts and filters the
  index, clicks steps, checks the elements, that the page's own console shows
  no errors, and that a screenshot is not blank.

``PEEKABOO_VIEWER_RESULTS=<results folder of a default run>`` also writes the
README's screenshot of an item page (docs/viewer-item.png) from that run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from peekaboo import tables
from peekaboo.cells import is_missing
from peekaboo.tracestore import open_traces, read_sidecars
from peekaboo.viewer import data as vdata

from fixtures.workflow import run_snakemake

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_PACKAGES = ("chromium", "chromium-driver")
SCREENSHOT = REPO / "docs" / "viewer-item.png"


# ----------------------------------------------------------------------------- the site of the tiny run


@pytest.fixture(scope="module")
def site(e2e_run):
    work, res, _ = e2e_run
    out = run_snakemake(work, "--", "viewer")  # "--": --configfile takes every word up to the next option
    assert (res / "viewer/index.html").is_file(), out[-3000:]
    return work, res, res / "viewer"


def _pairs(res: Path) -> list[tuple[str, str]]:
    return sorted((p.parent.name, p.stem) for p in (res / "steps").glob("*/*.parquet"))


def _items(site_dir: Path, model: str, dataset: str) -> dict[str, dict]:
    out = {}
    for path in sorted((site_dir / model / dataset / "items").glob("*.json")):
        record = json.loads(path.read_text())["item"]
        out[record["item_id"]] = record
    return out


def test_viewer_is_a_target_of_its_own(site):
    work, res, site_dir = site
    assert "Nothing to be done" in run_snakemake(work, "-n", "--", "viewer")
    # on demand: the default target neither needs nor rebuilds it
    assert "Nothing to be done" in run_snakemake(work, "-n")
    prov = json.loads((site_dir / "provenance.json").read_text())
    assert prov["config_hash"] and prov["code_hash"] and prov["package_version"]
    assert set(prov["pairs"]) == {f"{m}/{d}" for m, d in _pairs(res)}
    for m, d in _pairs(res):
        items = tables.read_table(res / f"items/{d}.parquet")
        assert prov["pairs"][f"{m}/{d}"]["counts"]["pages"] == len(items)
        assert len(list((site_dir / m / d / "items").glob("*.html"))) == len(items)


def test_pages_hold_the_steps_entropies_and_alignment_of_the_tables(site):
    _, res, site_dir = site
    checked_tokens = checked_pairs = 0
    for m, d in _pairs(res):
        records = _items(site_dir, m, d)
        steps = tables.read_table(res / f"steps/{m}/{d}.parquet")
        sidecar = read_sidecars(sorted((res / f"traces/{m}/{d}").glob("shard-*.parquet"))).set_index("trace_id")
        store = open_traces(sorted((res / f"traces/{m}/{d}").glob("shard-*.zarr")))
        position = {str(t): i for i, t in enumerate(store["trace_id"].values)}
        crm_alignment = res / f"crm/{m}/{d}/alignment.parquet"
        if not crm_alignment.exists():  # an unmasked dataset (panels-b) has no CRM job and no variants to show
            assert all(not rec["variants"] for rec in records.values()), (m, d)
            alignment = pd.DataFrame(index=pd.Index([], name="trace_id"))
        else:
            alignment = tables.read_table(crm_alignment).set_index("trace_id")
        for item_id, rec in records.items():
            base = rec["base"]
            assert base is not None and sidecar.loc[base["trace_id"], "variant"] == "base"
            answer = sidecar.loc[base["trace_id"], "answer_text"]
            assert base["answer_text"] == (None if is_missing(answer) else answer)
            own = steps[steps["trace_id"] == base["trace_id"]].sort_values("step")
            assert [s["text"] for s in base["steps"]] == list(own["text"])
            entropy = store["entropy"].values[position[base["trace_id"]]]
            text = sidecar.loc[base["trace_id"], "text"]
            starts = sidecar.loc[base["trace_id"], "token_char_start"]
            for s in base["steps"]:
                if s["tokens"] is None:
                    continue
                assert [t["index"] for t in s["tokens"]] == list(range(s["token_start"], s["token_end"]))
                for t in s["tokens"]:
                    assert t["entropy"] == pytest.approx(float(entropy[t["index"]]), rel=1e-6)
                    assert text[starts[t["index"]]:].startswith(t["text"])
                    checked_tokens += 1
            for v in rec["variants"]:
                if v["trace_id"] not in alignment.index:
                    continue
                pairs = {int(p["step"]): (int(p["base_step"]), p["similarity"]) for p in alignment.loc[v["trace_id"], "pairs"]}
                for s in v["steps"]:
                    if s["position"] in pairs:
                        b, sim = pairs[s["position"]]
                        assert s["match"]["base_step"] == b and s["match"]["similarity"] == pytest.approx(sim)
                        assert s["change"] == pytest.approx(min(1.0, max(0.0, 1.0 - sim)))
                    else:
                        assert s["match"] is None and s["change"] == 1.0
        checked_pairs += 1
    assert checked_pairs == len(_pairs(res)) and checked_tokens > 0


def test_maps_are_the_collapse_stage_maps(site):
    _, res, _ = site
    compared = 0
    for m, d in _pairs(res):
        maps = tables.read_table(res / f"collapse/{m}/{d}.maps.parquet")
        if maps.empty:
            continue
        src = next(p for p in vdata.group_sources(
            [res / f"steps/{m}/{d}.parquet", *sorted((res / f"traces/{m}/{d}").glob("shard-*.zarr"))], res))
        reader = vdata.StoreReader(src.stores)
        steps = vdata.trace_steps(tables.read_table(res / f"steps/{m}/{d}.parquet"))
        excluded = bool(maps["sinks_excluded"].iloc[0])
        sinks = sorted(set(maps.loc[maps["is_sink"], "patch"])) if excluded else []
        for tid, sub in maps.groupby("trace_id"):
            arrays = reader.get(tid)
            ours = vdata.step_maps(arrays.attn, steps[tid], arrays.n_tokens, sinks)
            for k, rows in sub.groupby("step_index"):
                share = rows["share"].to_numpy()
                if excluded:  # the maps table keeps sinks' shares; the viewer zeroes them and renormalises
                    share = np.where(rows["is_sink"], 0.0, share)
                    share = share / share.sum()
                np.testing.assert_allclose(ours[k][rows["patch"].to_numpy()], share, rtol=1e-5, atol=1e-9)
                compared += 1
    assert compared > 0


def test_report_zip_takes_the_viewer_and_the_html_report_still_builds(site):
    work, _, _ = site
    run_snakemake(work, "--report", "report.html")
    assert "viewer/index.html" in (work / "report.html").read_text()
    run_snakemake(work, "--report", "report.zip", "--", "all", "viewer")
    with zipfile.ZipFile(work / "report.zip") as z:
        names = set(z.namelist())
    vendored = [n for n in names if n.endswith("static/vendor/tabulator/tabulator.min.js")]
    assert len(vendored) == 1, "the viewer folder is not in the zip report"
    root = vendored[0].removesuffix("static/vendor/tabulator/tabulator.min.js")
    items = [n for n in names if n.startswith(root) and "/items/" in n and n.endswith(".html")]
    assert root + "index.html" in names and len(items) == len(list((work / "results/viewer").glob("*/*/items/*.html")))


# ----------------------------------------------------------------------------- headless Chromium


def _chromium() -> tuple[str, str]:
    """chromium and chromedriver, installed with apt (root, Debian's packages) when absent; else a skip saying why."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    missing = " ".join(CHROMIUM_PACKAGES)
    if not shutil.which("apt-get"):
        pytest.skip(f"Debian's {missing} are not installed and there is no apt-get to install them")
    if os.geteuid() != 0:
        pytest.skip(f"Debian's {missing} are not installed and installing them needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *CHROMIUM_PACKAGES]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:  # a fresh container has no package lists, an old one stale ones
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, timeout=600)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if proc.returncode != 0 or not all(found):
        pytest.skip(f"apt-get install {missing} failed: {(proc.stdout + proc.stderr)[-500:]}")
    return found  # type: ignore[return-value]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # root in a container: no sandbox; a fixed window so screenshots compare
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _console_errors(driver) -> list[str]:
    """The page's console errors (and failed loads) since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _not_blank(png: bytes) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert pixels.std() > 10, f"screenshot looks blank (pixel std {pixels.std():.1f})"
    assert (pixels < 200).mean() > 0.02, "screenshot is almost all white"


def _wait(driver, css: str, timeout: float = 20):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def _until(driver, condition, timeout: float = 10):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _images_loaded(driver) -> bool:
    return driver.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);")


def test_browser_follows_the_site_from_home_to_index_to_item(site, browser):
    from selenium.webdriver.common.by import By

    _, res, site_dir = site
    driver = browser
    driver.get((site_dir / "index.html").as_uri())
    pairs = driver.find_elements(By.CSS_SELECTOR, "#pairs tbody tr")
    assert len(pairs) == len(_pairs(res))
    assert _console_errors(driver) == []

    # home -> the first pair's index
    first = pairs[0].find_element(By.TAG_NAME, "a")
    model = first.text
    first.click()
    _wait(driver, ".tabulator-row")
    dataset = driver.current_url.rstrip("/").split("/")[-2]
    assert driver.current_url.endswith(f"/{model}/{dataset}/index.html")
    items = tables.read_table(res / f"items/{dataset}.parquet")
    assert driver.execute_script("return window.peekabooTable.getDataCount();") == len(items)
    assert driver.find_element(By.ID, "index-status").text == f"{len(items)} of {len(items)} items shown"
    assert _console_errors(driver) == []

    # sort by entropy: one click on the header, ascending
    driver.find_element(By.CSS_SELECTOR, '.tabulator-col[tabulator-field="entropy_full"] .tabulator-col-title').click()
    values = driver.execute_script(
        "return window.peekabooTable.getRows('active').map(r => r.getData().entropy_full);")
    finite = [v for v in values if v is not None]
    assert finite == sorted(finite) and len(finite) >= 2
    shown = driver.find_element(By.CSS_SELECTOR, '.tabulator-row .tabulator-cell[tabulator-field="entropy_full"]').text
    assert float(shown) == pytest.approx(finite[0], rel=5e-3)

    # the "wrong" preset: base traces answered and not correct, counted from the sidecars
    sidecar = read_sidecars(sorted((res / f"traces/{model}/{dataset}").glob("shard-*.parquet")))
    base = sidecar[sidecar["variant"] == "base"]
    wrong = int(((base["correct"] == False) & (base["abstained"] != True)).sum())  # noqa: E712 (nullable booleans)
    driver.find_element(By.CSS_SELECTOR, '.presets button[data-key="wrong"]').click()
    assert driver.execute_script("return window.peekabooTable.getDataCount('active');") == wrong
    driver.find_element(By.CSS_SELECTOR, '.presets button[data-key=""]').click()
    assert driver.execute_script("return window.peekabooTable.getDataCount('active');") == len(items)
    # a header filter on the item column
    box = driver.find_element(By.CSS_SELECTOR, '.tabulator-col[tabulator-field="item"] input')
    box.send_keys(str(items["item_id"].iloc[-1]))
    # header filters apply after a short pause in typing
    _until(driver, lambda d: d.execute_script("return window.peekabooTable.getDataCount('active');") == 1)
    driver.execute_script("window.peekabooTable.clearHeaderFilter();")

    # index -> an item page, by its link
    link = _wait(driver, '.tabulator-row .tabulator-cell[tabulator-field="item"] a')
    item_id = link.text
    link.click()
    _wait(driver, "#item-title")
    assert driver.find_element(By.ID, "item-title").text.startswith(item_id)
    question = items.set_index("item_id").loc[item_id, "question"]
    assert driver.find_element(By.ID, "question").text == question.strip()
    record = _items(site_dir, model, dataset)[item_id]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#base-steps > li.step")) == len(record["base"]["steps"])
    n_tokens = sum(len(s["tokens"] or []) for s in record["base"]["steps"])
    assert len(driver.find_elements(By.CSS_SELECTOR, "#base-steps .tokens .t")) == n_tokens
    assert _images_loaded(driver)
    assert _console_errors(driver) == []
    _not_blank(driver.get_screenshot_as_png())

    # next item, then back to the index by the breadcrumb
    if driver.find_elements(By.CSS_SELECTOR, 'a[rel="next"]'):
        driver.find_element(By.CSS_SELECTOR, 'a[rel="next"]').click()
        _wait(driver, "#item-title")
        assert not driver.find_element(By.ID, "item-title").text.startswith(item_id + " ")
        assert _console_errors(driver) == []
    driver.find_element(By.ID, "to-index").click()
    _wait(driver, ".tabulator-row")
    assert _console_errors(driver) == []


def test_browser_item_page_with_masked_variants(site, browser):
    from selenium.webdriver.common.by import By

    _, res, site_dir = site
    driver = browser
    # an item with CRM modes: its regions beside their controls
    chosen = None
    for m, d in _pairs(res):
        modes = tables.read_table(res / f"crm/{m}/{d}/modes.parquet")
        if len(modes):
            chosen = (m, d, str(modes["item_id"].iloc[0]), modes)
            break
    assert chosen, "the tiny run has no CRM modes to show"
    m, d, item_id, modes = chosen
    record = _items(site_dir, m, d)[item_id]
    page = site_dir / m / d / "items" / f"{vdata.safe_name(item_id)}.html"
    driver.get(page.as_uri())
    _wait(driver, "#item-title")
    n_modes = int((modes["item_id"] == item_id).sum())
    assert len(driver.find_elements(By.CSS_SELECTOR, ".region-block")) == n_modes
    assert len(driver.find_elements(By.CSS_SELECTOR, ".variant.trace")) == len(record["variants"])
    assert driver.find_elements(By.CSS_SELECTOR, ".variant.role-evidence .box.hidden")
    assert driver.find_elements(By.CSS_SELECTOR, ".attribution td.dep")
    assert _images_loaded(driver)

    # the base trace's large map follows the clicked step
    steps = driver.find_elements(By.CSS_SELECTOR, "#base-steps > li.step")
    overlays = driver.find_elements(By.CSS_SELECTOR, ".trace.base .figures.main .overlay")
    if len(steps) > 1 and overlays:
        rows = int(overlays[0].get_attribute("data-rows"))
        steps[-1].click()
        k = int(steps[-1].get_attribute("data-position"))
        assert "selected" in steps[-1].get_attribute("class")
        expected = 100 * k / (rows - 1) if rows > 1 else 0
        assert float(overlays[0].value_of_css_property("background-position-y").rstrip("%")) == pytest.approx(expected)
        sprite = re.search(r'url\("?([^")]+)"?\)', overlays[0].value_of_css_property("background-image")).group(1)
        assert Path(sprite.replace("file://", "")).is_file()
    # a masked step's link leads to the base step it was matched to
    links = driver.find_elements(By.CSS_SELECTOR, "a.match")
    if links:
        target = links[0].get_attribute("href").split("#")[1]
        driver.execute_script("arguments[0].scrollIntoView()", links[0])
        links[0].click()
        assert driver.current_url.endswith("#" + target)
        assert driver.find_element(By.ID, target).get_attribute("data-position") is not None
    assert _console_errors(driver) == []
    _not_blank(driver.get_screenshot_as_png())


# ----------------------------------------------------------------------------- the README's screenshot


def test_readme_screenshot_of_a_default_run(tmp_path, browser):
    """Writes docs/viewer-item.png from a default run's results (PEEKABOO_VIEWER_RESULTS); skipped without them."""
    results = os.environ.get("PEEKABOO_VIEWER_RESULTS")
    if not results:
        pytest.skip("PEEKABOO_VIEWER_RESULTS (a default run's results folder) not set: the README's screenshot "
                    "is written only from such a run")
    import peekaboo.config as pcfg
    from peekaboo.viewer import run_stage
    from peekaboo.stage import StageCall

    results = Path(results).resolve()
    cfg = pcfg.validate(pcfg.load_yaml(REPO / "config.yaml"), base_dir=REPO)
    inputs = {"all": [str(p) for p in sorted(results.glob("items/*.parquet")) if ".rejects." not in p.name]
              + [str(p) for p in sorted(results.glob("masks/*.parquet")) if ".skipped." not in p.name]
              + [str(p) for p in sorted(results.glob("traces/*/*/shard-*.*"))]
              + [str(p) for p in sorted(results.glob("steps/*/*.parquet"))]
              + [str(p) for p in sorted(results.glob("crm/*/*/*.parquet"))]
              + [str(p) for p in sorted(results.glob("collapse/*/*.parquet")) if ".maps." not in p.name]}
    site_dir = tmp_path / "viewer"
    run_stage(StageCall(inputs=inputs, outputs={"site": str(site_dir)},
                        config={"viewer": cfg["viewer"], "collapse": {"layers": cfg["collapse"]["layers"]}},
                        results_dir=results))
    page = os.environ.get("PEEKABOO_VIEWER_PAGE", "grounded/panels/items/panels-000004.html")
    browser.set_window_size(1280, 1000)
    browser.get((site_dir / page).as_uri())
    _wait(browser, "#item-title")
    assert _console_errors(browser) == []
    height = min(2200, browser.execute_script("return document.body.scrollHeight;"))
    browser.set_window_size(1280, height)
    png = browser.get_screenshot_as_png()
    browser.set_window_size(1400, 1000)
    _not_blank(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((960, round(image.height * 960 / image.width)), Image.Resampling.LANCZOS)
    image = image.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    image.save(SCREENSHOT, format="PNG", optimize=True)
    assert SCREENSHOT.stat().st_size < 600_000
