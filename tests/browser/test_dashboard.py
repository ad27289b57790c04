"""The dashboard in a real browser against the real service: sign in, upload and create a
job through the page, watch it run to success with the charts drawing, read its
evaluation samples, download an artifact, cancel jobs, and see only the own team's jobs."""

from __future__ import annotations

import hashlib
import re

import httpx
from playwright.sync_api import expect

from tests.e2e.conftest import training_processes
from tests.jobdata import jsonl, news_rows

def test_page_is_served_with_its_vendored_chart_library(e2e_api):
    page = httpx.get(f"{e2e_api}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
        got = httpx.get(f"{e2e_api}/{asset}", timeout=10)
        assert got.status_code == 200 and got.content, asset
    assert "static/vendor/uPlot.iife.min.js" in page.text
    assert httpx.get(f"{e2e_api}/healthz", timeout=10).json() == {"status": "ok"}


def test_wrong_key_is_refused_and_nothing_is_kept(dashboard):
    d = dashboard()
    d.go("")
    d.page.fill("#api-key", "tf-not-a-real-key")
    d.page.click("form.signin button[type=submit]")
    expect(d.page.locator("form.signin .error")).to_contain_text("sign in again")
    d.shot("sign-in")
    assert d.page.evaluate("sessionStorage.length") == 0
    assert d.context.cookies() == []


def test_create_through_the_page_and_watch_it_succeed(dashboard, key_a, e2e_model, client_a, e2e_api, tmp_path):
    d = dashboard()
    d.sign_in(key_a)
    page = d.page
    page.click("nav a[data-page=new]")
    data = tmp_path / "news.jsonl"
    data.write_bytes(jsonl(news_rows(8)))
    page.set_input_files("#upload", str(data))
    expect(page.locator("#file-info")).to_contain_text("8 rows")
    # The columns come from the uploaded file; the template fields are picked from them.
    assert page.locator("#prompt-column option").all_inner_texts() == ["—", "document", "summary"]
    page.select_option("#prompt-column", "document")
    page.fill("#template-prompt", "다음 글을 요약해주세요: {document}")
    page.select_option("#completion-column", "summary")
    expect(page.locator("#template-completion")).to_have_value("{summary}")
    page.fill("#model", str(e2e_model))
    for field, value in {"n_epochs": "50", "max_steps": "4", "batch_size": "2", "max_seq_length": "384",
                         "checkpoint_every_steps": "2", "validation_split": "0.25", "generation_samples": "1",
                         "max_new_tokens": "4", "gpus": "0", "suffix": "web"}.items():
        page.fill(f"#{field}", value)
    page.click("#validate")
    expect(page.locator("#dry-run")).to_contain_text("train_rows", timeout=60_000)
    expect(page.locator("#dry-run")).to_contain_text("estimated_steps")
    expect(page.locator("#fit-plan")).to_contain_text("not planned here: the job asks for a CPU slot")
    page.fill("#gpus", "1")  # a GPU job is planned from the model's config.json (the pool has no GPU kind to list)
    page.click("#validate")
    expect(page.locator("#fit-plan")).to_contain_text(re.compile(r"needs ~[0-9.]+ GiB per GPU · [0-9,]+ optimizer steps"), timeout=60_000)
    page.fill("#gpus", "0")
    d.shot("new-job")
    page.click("#create")

    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[1]
    status = page.locator("#job-facts [data-status]")
    expect(status).to_have_attribute("data-status", re.compile("queued|running"))
    expect(status).to_have_attribute("data-status", "succeeded", timeout=180_000)
    # Every training step's loss reached the chart (4 steps, logged each step).
    expect(page.locator(".chart[data-metric=loss]")).to_have_attribute("data-points", "4", timeout=15_000)
    expect(page.locator(".chart[data-metric=eval_loss]")).not_to_have_attribute("data-points", "0")
    assert page.locator(".chart[data-metric=loss] canvas").count() == 1
    expect(page.locator("#events")).to_contain_text("Job succeeded")
    expect(page.locator("#checkpoints tbody tr")).to_have_count(2)
    expect(page.locator("#dataset")).to_contain_text("train rows")
    expect(page.locator("#spec")).to_contain_text("다음 글을 요약해주세요")

    page.click("#eval-samples summary")
    sample = page.locator("#eval-samples .sample").first
    expect(sample).to_be_visible()
    expect(sample).to_contain_text("Reference")
    expect(sample).to_contain_text("요약해주세요")

    arts = {a["name"]: a for a in client_a.http.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts").json()["data"]}
    with page.expect_download() as got:
        page.click("tr[data-artifact='adapter.tar.gz'] button.download")
    saved = tmp_path / "adapter.tar.gz"
    got.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == arts["adapter.tar.gz"]["sha256"]

    page.fill("#zoom-from", "2")
    page.fill("#zoom-to", "3")
    page.click("#zoom-apply")
    page.evaluate("window.scrollTo(0, 0)")
    shot = d.shot("job-page")
    d.page.set_viewport_size({"width": 1280, "height": 1500})
    d.page.fill("#zoom-from", "")
    d.page.fill("#zoom-to", "")
    d.page.click("text=Reset")
    d.page.evaluate("window.scrollTo(0, 0)")
    d.shot("job-page-top", full_page=False)
    assert shot.stat().st_size > 0

    for report in BASE_VS_TUNED:
        show_base_vs_tuned(page, e2e_api, report)

    page.click("nav a[data-page=jobs]")
    row = page.locator(f"#jobs tr[data-job='{job_id}']")
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "succeeded")
    expect(row).to_contain_text("web")
    d.shot("jobs")
    page.select_option("#status-filter", "failed")
    expect(row).to_have_count(0)
    page.select_option("#status-filter", "succeeded")
    expect(row).to_have_count(1)


PROMPT = "다음 글을 요약해주세요: 서울시는 새 자전거 도로를 열었다."
BASE_VS_TUNED = [
    # Report-level sections, samples joined by row.
    {"base": {"metrics": {"eval_loss": 3.25, "rouge1": 0.12}, "samples": [{"row": 3, "prompt": PROMPT, "reference": "자전거 도로 개통", "prediction": "기본 모델 출력"}]},
     "tuned": {"metrics": {"eval_loss": 1.5, "rouge1": 0.61}, "samples": [{"row": 3, "prompt": PROMPT, "reference": "자전거 도로 개통", "prediction": "튜닝된 출력"}]},
     "num_eval_rows": 2},
    # Metrics nested under metrics.base/.tuned, both outputs on each sample.
    {"metrics": {"base": {"eval_loss": 3.25, "rouge1": 0.12}, "tuned": {"eval_loss": 1.5, "rouge1": 0.61}},
     "samples": [{"prompt": PROMPT, "reference": "자전거 도로 개통", "base_output": "기본 모델 출력", "tuned_output": "튜닝된 출력"}]},
]


def show_base_vs_tuned(page, api: str, report: dict) -> None:
    """The evaluation section given a base-vs-fine-tuned report (the shapes the evaluation
    may write), served in place of this job's own report."""
    page.unroute_all()
    page.route("**/artifacts/eval_report.json", lambda route: route.fulfill(json={"url": f"{api}/test-report.json", "expires_at": 0}))
    page.route("**/test-report.json", lambda route: route.fulfill(json=report))
    page.reload()
    metrics = page.locator("#eval-metrics")
    expect(metrics).to_contain_text("Base model")
    expect(metrics.locator("tr", has_text="rouge1")).to_contain_text("0.12")
    expect(metrics.locator("tr", has_text="rouge1")).to_contain_text("0.61")
    page.click("#eval-samples summary")
    sample = page.locator("#eval-samples .sample").first
    for text in ("Base model", "기본 모델 출력", "Fine-tuned", "튜닝된 출력", "자전거 도로 개통", PROMPT):
        expect(sample).to_contain_text(text)
    page.unroute_all()


def test_pool_shows_other_teams_only_as_counts_and_jobs_cancel_from_the_page(dashboard, client_a, key_a, key_b, e2e_api):
    """Team A runs one long job and queues a second behind it (one worker slot)."""
    running = client_a.create_job(max_steps=10_000, every=10_000)
    client_a.wait(running.id, lambda j: j.status == "running" and training_processes(running.id), what="a live child")
    waiting = client_a.create_job(max_steps=4)

    b = dashboard()
    b.sign_in(key_b)
    expect(b.page.locator("#jobs tbody tr")).to_have_count(0)
    expect(b.page.locator("main")).to_contain_text("No jobs yet")
    b.go(f"#/jobs/{running.id}")
    expect(b.page.locator("main .error")).to_contain_text("No fine-tuning job")
    b.go("#/pool")
    expect(b.page.locator("#queue")).to_contain_text("1 job(s) of other teams")
    expect(b.page.locator("#workers")).to_be_visible()
    html = b.page.content()
    assert running.id not in html and waiting.id not in html
    b.shot("pool-other-team")

    desk = dashboard()
    desk.sign_in(key_a)
    queued_row = desk.page.locator(f"#jobs tr[data-job='{waiting.id}']")
    expect(queued_row).to_contain_text("#1")  # its place in the queue, and why it waits
    expect(queued_row).to_contain_text("busy")
    desk.shot("jobs-waiting")

    a = dashboard(width=390, height=844)  # a phone
    a.sign_in(key_a)
    a.go("#/pool")
    expect(a.page.locator("#queue")).to_contain_text(waiting.id)
    expect(a.page.locator("#workers")).to_contain_text(running.id)
    expect(a.page.locator("#shares")).to_contain_text("(you)")
    a.shot("pool-phone")

    for job in (waiting, running):
        a.go(f"#/jobs/{job.id}")
        a.page.click("#job-cancel")
        expect(a.page.locator("#confirm")).to_be_visible()
        a.page.click("#confirm-ok")
        expect(a.page.locator("#job-facts [data-status]")).to_have_attribute("data-status", "cancelled", timeout=60_000)
    assert client_a.sdk.fine_tuning.jobs.retrieve(running.id).status == "cancelled"
    assert training_processes(running.id) == []

