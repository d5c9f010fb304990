"""`POST /v1/plans/compare` with real vLLM: the rationale comes out of guided decoding (xgrammar) as
schema-valid JSON, ad lines from the creative stack."""

from __future__ import annotations

import pytest

from tests.serve.test_compare_api import check_comparison

pytestmark = pytest.mark.slow


def test_compare_with_vllm_writes_schema_valid_json(serve_url: str) -> None:
    check_comparison(serve_url)
