"""Helpers for tests that run against a Kubernetes API."""
