"""Model families behind one registry (see registry.py)."""
