"""running stage."""
