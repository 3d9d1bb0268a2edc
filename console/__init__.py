"""The operator console: HTML pages served by the ingress under /console (see docs/console.md)."""
