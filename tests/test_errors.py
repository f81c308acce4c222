"""One error shape for every failure, framework errors included."""


def assert_error(r, status, type_, code, param=None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["type"] == type_
    assert error["code"] == code
    assert error["message"] and error["message"][0].isupper()
    assert error["param"] == param


def test_unknown_route_and_method(api):
    assert_error(api.get("/v1/nothing-here"), 404, "not_found_error", "not_found")
    assert_error(api.delete("/v1/training_jobs"), 405, "invalid_request_error", "method_not_allowed")


def test_malformed_json_and_unknown_fields(api):
    r = api.post("/v1/training_jobs", content=b"{nope", headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_request_error", "invalid_json")
    r = api.post(
        "/v1/training_jobs", json={"base_model": "m", "dataset_id": "ds_x", "gpu": {"type": "cpu"}, "colour": 1}
    )
    assert_error(r, 400, "invalid_request_error", "unknown_field", "colour")
    r = api.post("/v1/training_jobs", json={"base_model": "m", "dataset_id": "ds_x", "gpu": {"type": "cpu", "size": 1}})
    assert_error(r, 400, "invalid_request_error", "unknown_field", "gpu.size")


def test_wrong_types_and_bounds_name_the_field(api):
    r = api.post("/v1/training_jobs", json={"base_model": 5, "dataset_id": "ds_x", "gpu": {"type": "cpu"}})
    assert_error(r, 400, "invalid_request_error", "invalid_value", "base_model")
    r = api.post(
        "/v1/training_jobs", json={"base_model": "m", "dataset_id": "ds_x", "gpu": {"type": "cpu", "count": 0}}
    )
    assert_error(r, 400, "invalid_request_error", "invalid_value", "gpu.count")
    r = api.get("/v1/training_jobs?limit=101")
    assert_error(r, 400, "invalid_request_error", "invalid_value", "limit")
    r = api.get("/v1/training_jobs?status=exploded")
    assert_error(r, 400, "invalid_request_error", "invalid_value", "status")


def test_unknown_ids_are_404(api):
    assert_error(api.get("/v1/training_jobs/job_nope"), 404, "not_found_error", "training_job_not_found")
    assert_error(api.get("/v1/datasets/ds_nope"), 404, "not_found_error", "dataset_not_found")
    assert_error(api.get("/v1/reward_functions/rf_nope"), 404, "not_found_error", "reward_function_not_found")


def test_openapi_document_describes_the_error_shape(api):
    doc = api.client.get("/schema/openapi.json").json()
    assert "ErrorBody" in doc["components"]["schemas"]
    create = doc["paths"]["/v1/training_jobs"]["post"]
    assert create["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")
    limit = next(p for p in doc["paths"]["/v1/training_jobs"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 100
