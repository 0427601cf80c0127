"""journal stage."""
