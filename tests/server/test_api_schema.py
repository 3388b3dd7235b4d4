"""Schemathesis against the live server's /openapi.json: generated requests for every operation (a bounded
number each) must never get a 500, and every answer must match the documented statuses, headers and schemas."""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from server.settings import Settings
from tests.support import LiveServer, person_crops

ADMIN = "schema-admin-key"


@pytest.fixture(scope="module")
def live_schema(tiny_artifact, tmp_path_factory):
    settings_ = Settings(
        backend="onnx",
        artifact=tiny_artifact,
        gallery_dir=tmp_path_factory.mktemp("schema") / "gallery",
        create_gallery=True,
        admin_keys=ADMIN,
        _env_file=None,
    )
    with LiveServer(settings_) as url:
        crops = person_crops(3, seed=5)
        r = httpx.post(
            f"{url}/v1/gallery",
            files=[("images", c) for c in crops],
            data={"person_id": "p"},
            headers={"X-API-Key": ADMIN},
        )
        assert r.status_code == 201, r.text
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.mark.slow
def test_generated_requests_never_get_a_500_and_match_the_schema(live_schema):
    operations = [result.ok() for result in live_schema.get_all_operations()]
    assert len(operations) >= 9  # search, embed, gallery x4, healthz, readyz, metrics

    for operation in operations:

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case):
            # Any bytes are a schema-valid "binary" image: a 415 for them is right, not a rejected valid request.
            case.call_and_validate(headers={"X-API-Key": ADMIN}, excluded_checks=[positive_data_acceptance], timeout=60)

        check()
