"""Read-only FHIR R4 views of the pool (R19) and its SMART Scheduling Links bulk publication."""
