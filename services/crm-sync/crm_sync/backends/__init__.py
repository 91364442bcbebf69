"""CRM backends behind one protocol (backends/base.py)."""
