"""On CI (CI=true) a skipped test is a failure: CI installs every dependency and has ../shared, so a skip
there means something is missing that the suite would otherwise silently stop checking.

Anywhere, a run that skipped tests for want of the shared data (models, audio) ends with one loud
block saying where it looked, how to provide the data, and which test files lost how many tests.
"""

import collections
import os

import pytest

from _paths import REPO, SHARED_DIR, SHARED_FROM_ENV, skipped_for_shared_data

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SHARED_SKIPS = pytest.StashKey[set]()  # node ids skipped because the shared data is missing


def _skip_reason(report) -> str:
    return str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)


def _check_skip(config, report, what):
    if not report.skipped:
        return
    reason = _skip_reason(report)
    if skipped_for_shared_data(reason):
        config.stash.setdefault(SHARED_SKIPS, set()).add(what)
    if ON_CI:
        report.outcome = "failed"
        report.longrepr = f"{what} was skipped on CI, where nothing may be skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _check_skip(item.config, outcome.get_result(), item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _check_skip(collector.config, outcome.get_result(), collector.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = config.stash.get(SHARED_SKIPS, set())
    if not skipped:
        return
    where = "$TINYASR_SHARED" if SHARED_FROM_ENV else "the default, ../shared beside the repository"
    state = "is incomplete" if SHARED_DIR.is_dir() else "was not found"
    per_file = collections.Counter(nodeid.split("::")[0] for nodeid in skipped)
    write = terminalreporter.write_line
    terminalreporter.write_sep("!", f"shared test data {state}: {len(skipped)} tests skipped", red=True, bold=True)
    write(f"The shared test data (models, audio) {state} at {SHARED_DIR} ({where}).", red=True, bold=True)
    write(f"Get it: set TINYASR_SHARED=/path/to/shared, or place it beside the repository as {REPO.parent / 'shared'}.")
    write(f"{len(skipped)} tests skipped for want of it: "
          + ", ".join(f"{name} ({count})" for name, count in sorted(per_file.items())))
