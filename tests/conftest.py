"""On CI (CI=true) a skipped test is a failure: CI installs every dependency and has ../shared, so a skip
there means something is missing that the suite would otherwise silently stop checking."""

import os

import pytest

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _fail_skip(report, what):
    if ON_CI and report.skipped:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"{what} was skipped on CI, where nothing may be skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result(), item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip(outcome.get_result(), collector.nodeid)
