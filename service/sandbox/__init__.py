"""The sandbox: a clock integrators move through the API (docs/sandbox.md)."""
