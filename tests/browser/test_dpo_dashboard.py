"""A DPO job's page draws its preference metrics (reward margin, preference accuracy, the
two rewards) from the metric series; a supervised job's page keeps those charts hidden."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.test_dpo_sdk import preference_rows
from tests.jobdata import jsonl

DPO_CHARTS = ("rewards_margin", "reward_accuracy", "rewards_chosen", "rewards_rejected")


def test_dpo_job_page_charts_its_preference_metrics(dashboard, key_a, client_a):
    f = client_a.sdk.files.create(file=("prefs.jsonl", jsonl(preference_rows())), purpose="fine-tune")
    job = client_a.sdk.fine_tuning.jobs.create(
        model=str(client_a.model), training_file=f.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    assert client_a.wait_terminal(job.id).status == "succeeded"
    sft = client_a.create_job(max_steps=2)
    d = dashboard()
    d.sign_in(key_a)
    d.go(f"#/jobs/{job.id}")
    for key in DPO_CHARTS:
        chart = d.page.locator(f".chart[data-metric={key}]")
        expect(chart).to_have_attribute("data-points", "2", timeout=15_000)
        expect(chart).to_be_visible()
    d.shot("dpo-job")
    d.go(f"#/jobs/{sft.id}")
    expect(d.page.locator(".chart[data-metric=loss]")).to_be_visible(timeout=15_000)
    for key in DPO_CHARTS:
        expect(d.page.locator(f".chart[data-metric={key}]")).to_be_hidden()
