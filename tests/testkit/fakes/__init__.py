"""Loopback fakes of vendor speech APIs that speak their documented wire protocols (tests only)."""
