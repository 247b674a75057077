"""JSON patch as the Kubernetes API server applies it (evanphx/json-patch), for unit tests of our patches.

One difference from RFC 6902 matters to jobgate: a ``test`` whose value is null
passes when the member is missing. tests/test_patches_on_the_api_server.py checks
this against the real API server.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import jsonpointer  # type: ignore[import-untyped]


class Refused(Exception):
    """The API server would answer 422: a test failed or a path is missing."""


def apply(document: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    result = copy.deepcopy(document)
    for op in patch:
        if op["op"] == "test" and op["value"] is None:
            try:
                found = jsonpointer.resolve_pointer(result, op["path"], None)
            except jsonpointer.JsonPointerException as e:
                raise Refused(str(e)) from e
            if found is not None:
                raise Refused(f"{op['path']} is {found!r}, not missing")
            continue
        try:
            result = jsonpatch.apply_patch(result, [op])
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            raise Refused(str(e)) from e
    return result
