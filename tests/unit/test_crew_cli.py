"""The crew example's command line: --help, an unreachable server, and the final report's wording."""

from __future__ import annotations

import pytest

from examples.agents.crew import final_message, main, refusal
from tests.ports import free_port


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--tool-choice" in capsys.readouterr().out


def test_unreachable_server_is_a_message_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_report_states_refusals_and_missing_comparison() -> None:
    assert refusal(200, {}) is None
    err = refusal(403, {"error": {"message": "tenant 'a' may plan only for its own brand"}})
    assert err == "403: tenant 'a' may plan only for its own brand"
    text = final_message("b", "acme", [{"role": "planner", "error": err}], {"comparison_error": err})
    assert f"No comparison: {err}" in text and f"refused at planner: {err}" in text
