"""The evidence page served by the stream (docs/evidence-page.md)."""
