"""schemathesis against the service's own OpenAPI schema: generated requests,
valid and invalid, to every operation, for a bounded number of examples.  No
answer may be a 5xx, and every answer must match what the schema documents
(status codes, content types, response bodies)."""
import time

import pytest

from servekit import build_engine, require_serve

require_serve()
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (make test installs it)")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis import checks as st_checks  # noqa: E402

from imgsearch import service  # noqa: E402

EXAMPLES = 12          # per operation and mode: 8 operations x 2 modes, a few seconds in all
BUDGET_SECONDS = 40    # a hard stop, should the machine be very slow


def test_no_server_errors_and_answers_match_the_schema(tmp_path, rng):
    engine, path, _ = build_engine(str(tmp_path), rng, per_class=3)
    app = service.create_app(engine, index_path=path, allow_add=True, save_delay=0.05)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    started = time.monotonic()
    seen = {}
    no_negative = []  # operations without inputs have no invalid requests to make
    checks = [getattr(st_checks, name) for name in ("not_a_server_error", "status_code_conformance",
                                                    "content_type_conformance", "response_schema_conformance")]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 8
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                if time.monotonic() - started > BUDGET_SECONDS:
                    return
                response = case.call()
                seen.setdefault(op.label, set()).add(response.status_code)
                assert response.status_code < 500, (op.label, response.status_code, response.text[:300])
                case.validate_response(response, checks=checks)

            try:
                run()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, op.label
                no_negative.append(op.label)
    assert sorted(no_negative) == ["GET /healthz", "GET /info"], no_negative
    # the run reached every operation, and both answers and refusals were seen
    assert set(seen) == {op.label for op in operations}, seen
    codes = set().union(*seen.values())
    assert any(c < 300 for c in codes) and any(400 <= c < 500 for c in codes), seen
