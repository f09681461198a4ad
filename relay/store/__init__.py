"""Event storage behind one small interface (base.EventStore)."""
