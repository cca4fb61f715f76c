"""What schemathesis checks on every generated request to the JSON API."""
from __future__ import annotations

from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

#: No 5xx, and every answer within the OpenAPI document (body, status code, content type).
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
