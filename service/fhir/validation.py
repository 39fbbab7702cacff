"""Every resource served is checked against the fhir.resources R4B models and their required code lists.

fhir.resources has no R4 (4.0.1) module; R4B (4.3.0) defines Location, Schedule, Slot,
Appointment, Bundle, OperationOutcome and CapabilityStatement with the same elements,
cardinalities and required bindings as R4, so its models check what this server declares.
The models check structure and types but not the required code lists (Slot.status accepts
any string), so ``code_list_errors`` walks the parsed model and checks every element whose
binding the package lists in ``enum_values``.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import BaseModel


class InvalidResource(Exception):
    """A resource this server built does not conform: a bug, never the caller's fault."""


def code_list_errors(model: BaseModel, path: str = "") -> list[str]:
    """Elements of ``model`` (recursively) whose value is outside their required code list."""
    errors: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if value is None:
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        allowed = extra.get("enum_values")
        values = value if isinstance(value, list) else [value]
        where = f"{path}.{field.alias or name}" if path else (field.alias or name)
        for item in values:
            if isinstance(allowed, list) and isinstance(item, str) and item not in allowed:
                errors.append(f"{where}: {item!r} is not one of {allowed}")
            if isinstance(item, BaseModel):
                errors.extend(code_list_errors(item, where))
    return errors


def parse_resource(data: dict[str, Any]) -> FHIRAbstractModel:
    """The R4B model of ``data``, refusing structural errors and codes outside required lists."""
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str):
        raise InvalidResource("resourceType is missing")
    model_class = get_fhir_model_class(resource_type)
    try:
        model = model_class.model_validate(data)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise InvalidResource(f"{resource_type} does not validate: {exc}") from exc
    errors = code_list_errors(model)
    if errors:
        raise InvalidResource(f"{resource_type}: {'; '.join(errors)}")
    return model


def checked(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` itself, once it has passed ``parse_resource``."""
    parse_resource(data)
    return data
